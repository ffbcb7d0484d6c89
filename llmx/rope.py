"""RoPE scaling arithmetic, in one place (paddle-free): the scaling types `model.rope_scaling` takes, their
keys, their one-line checks, and each type's inverse frequencies and attention factor.

A scaling is the dict Hugging Face checkpoints carry as `rope_scaling` in config.json: `rope_type` (or the older
spelling `type`) plus the type's keys, named as transformers 4.55.4 names them. The numbers are transformers'
`ROPE_INIT_FUNCTIONS` for the same config (tests/quick/test_rope.py checks them against it), including its
choices where papers and other libraries differ:
- dynamic NTK fits the base to the current sequence length L once L passes max_position_embeddings (not
  rope_scaling's original_max_position_embeddings, which transformers accepts and does not read);
- YaRN with original_max_position_embeddings takes its factor as max_position_embeddings / that, whatever
  `factor` says (DeepSeek-V3's convention; a Qwen2.5 config.json that leaves max_position_embeddings at the
  original length thus scales nothing in transformers, nor here).
llmx.engine.rope puts the tables into PaddleNLP's rotary layers; families say whether they take a scaling
(llmx.families.record.Family.rope_layout).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from llmx.errors import ConfigError

# type -> (required keys, optional keys), besides rope_type/type.
TYPES = {
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ("original_max_position_embeddings",)),
    "yarn": (("factor",), ("original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
                           "mscale", "mscale_all_dim", "truncate")),
    "llama3": (("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"), ()),
}
NO_SCALING = "default"  # transformers' name for plain RoPE; a config.json may say so explicitly
YARN_BETA_FAST, YARN_BETA_SLOW = 32, 1  # the YaRN paper's defaults, as transformers takes them


def scaling_type(scaling: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The type a scaling names (rope_type, else type), or None for no scaling."""
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    return None if kind == NO_SCALING else kind


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(scaling: Any, where: str = "model.rope_scaling") -> None:
    """Raise a one-line ConfigError naming `where`'s key when `scaling` is not a scaling llmx computes."""
    if scaling is None:
        return
    if not isinstance(scaling, Mapping):
        raise ConfigError(f"{where}={scaling!r}: a mapping such as {{rope_type: linear, factor: 2.0}}")
    spelled = [k for k in ("rope_type", "type") if k in scaling]
    if not spelled:
        raise ConfigError(f"{where}: no rope_type (or type): allowed: {', '.join(TYPES)}")
    if len(spelled) == 2 and scaling["rope_type"] != scaling["type"]:
        raise ConfigError(f"{where}: rope_type={scaling['rope_type']!r} and type={scaling['type']!r} disagree")
    kind = scaling[spelled[0]]
    if kind == NO_SCALING:
        return
    if kind not in TYPES:
        raise ConfigError(f"{where}.{spelled[0]}={kind!r}: allowed: {', '.join(TYPES)} (or {NO_SCALING}: none)")
    required, optional = TYPES[kind]
    for key in scaling:
        if key not in required + optional + ("rope_type", "type"):
            raise ConfigError(f"{where}.{key}: not a key of rope_type {kind} "
                              f"(allowed: {', '.join(required + optional)})")
    for key in required:
        if key not in scaling:
            raise ConfigError(f"{where}: rope_type {kind} needs {key} (required: {', '.join(required)})")
    _check_values(scaling, kind, where)


def _check_values(s: Mapping[str, Any], kind: str, where: str) -> None:
    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{where}.{key}={s[key]!r}: {allowed}")

    need(_number(s["factor"]) and s["factor"] >= 1, "factor", "a number >= 1")
    if "original_max_position_embeddings" in s:
        value = s["original_max_position_embeddings"]
        need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             "original_max_position_embeddings", "a positive integer")
    for key in ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if s.get(key) is not None:
            need(_number(s[key]), key, "a number")
    if s.get("attention_factor") is not None:
        need(_number(s["attention_factor"]) and s["attention_factor"] > 0, "attention_factor", "a number > 0")
    if s.get("truncate") is not None:
        need(isinstance(s["truncate"], bool), "truncate", "true or false")
    if kind == "llama3":
        need(s["high_freq_factor"] > s["low_freq_factor"], "high_freq_factor",
             f"must be greater than low_freq_factor={s['low_freq_factor']!r}")
    if kind == "yarn" and (s.get("beta_fast") or YARN_BETA_FAST) < (s.get("beta_slow") or YARN_BETA_SLOW):
        need(False, "beta_fast" if s.get("beta_fast") is not None else "beta_slow",
             "beta_fast must not be below beta_slow (defaults 32 and 1)")


def inverse_frequencies(scaling: Optional[Mapping[str, Any]], dim: int, base: float, max_position_embeddings: int,
                        seq_len: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """The rotary inverse frequencies ([dim // 2] float32) of a head of `dim` rotated dimensions and the factor
    cos and sin are multiplied by, for `scaling` (None: plain RoPE). `seq_len`, the length being run, matters to
    dynamic NTK only."""
    s = scaling or {}
    kind = scaling_type(s)
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    plain = 1.0 / base ** exponents
    attention = 1.0
    if kind is None:
        inv = plain
    elif kind == "linear":  # positions divided by factor
        inv = plain / s["factor"]
    elif kind == "dynamic":  # NTK-aware: a larger base, refitted to the length once it passes the context
        length = max(seq_len or max_position_embeddings, max_position_embeddings)
        alpha = s["factor"] * length / max_position_embeddings - (s["factor"] - 1)
        inv = 1.0 / (base * alpha ** (dim / (dim - 2))) ** exponents
    elif kind == "yarn":
        inv, attention = _yarn(s, dim, base, max_position_embeddings, plain)
    elif kind == "llama3":
        inv = _llama3(s, plain)
    else:
        raise ConfigError(f"rope_scaling: rope_type {kind!r}: allowed: {', '.join(TYPES)}")
    return inv.astype(np.float32), float(attention)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(s: Mapping[str, Any], dim: int, base: float, max_positions: int, plain: np.ndarray):
    """YaRN (Peng et al. 2023): frequencies that turn fewer than beta_slow times over the original context are
    interpolated (divided by factor), those turning more than beta_fast times kept, a linear ramp between; the
    attention is sharpened by 0.1 ln(factor) + 1 (or DeepSeek's mscale / mscale_all_dim ratio)."""
    factor, original = s["factor"], max_positions
    if "original_max_position_embeddings" in s:
        original = s["original_max_position_embeddings"]
        factor = max_positions / original
    attention = s.get("attention_factor")
    if attention is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention = _yarn_mscale(factor, s["mscale"]) / _yarn_mscale(factor, s["mscale_all_dim"])
        else:
            attention = _yarn_mscale(factor)

    def dimension_turning(turns: float) -> float:  # the (fractional) dimension index that turns `turns` times
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low = dimension_turning(s.get("beta_fast") or YARN_BETA_FAST)
    high = dimension_turning(s.get("beta_slow") or YARN_BETA_SLOW)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of width 0 would divide by zero
    interpolated = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return plain / factor * interpolated + plain * (1.0 - interpolated), attention


def _llama3(s: Mapping[str, Any], plain: np.ndarray) -> np.ndarray:
    """Llama 3.1's: wavelengths longer than original/low_freq_factor are divided by factor, shorter than
    original/high_freq_factor kept, and those between blended by where original/wavelength falls between the two."""
    factor, original = s["factor"], s["original_max_position_embeddings"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    wavelength = 2 * math.pi / plain
    kept = plain * (wavelength < original / high)
    divided = plain / factor * (wavelength > original / low)
    middle = ~(wavelength < original / high) & ~(wavelength > original / low)
    smooth = (original / wavelength - low) / (high - low)
    blended = ((1 - smooth) * plain / factor + smooth * plain) * middle
    return kept + divided + blended
