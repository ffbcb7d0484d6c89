"""The `data` block of every stage that reads examples: its files, their format and mixing weights, checked
before anything is read. The readers of each format are llmx.data's; the format names each kind of stage
data accepts are the allowed values of `stage.data.format`, so they are here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import MISSING

from llmx.errors import ConfigError


@dataclass
class DataFiles:
    """The data block every stage that reads examples shares; each stage sets its own defaults."""
    # a file (JSONL, JSON array, parquet) or a `datasets` directory (`dir:split` for a split), or a list of them
    train: Any = MISSING
    eval: Optional[str] = None  # held-out examples, the same kinds of path
    format: str = "auto"  # auto (detected per file) or a format name (llmx.data.formats)
    weights: Optional[List[float]] = None  # with several train paths: their mixing weights (None: all of each)


# The formats each kind of data is read from (llmx.data.formats reads them).
FORMATS = {
    "sft": ("messages", "sharegpt", "alpaca", "src_tgt", "trl"),
    "preference": ("src_tgt", "trl", "alpaca", "sharegpt", "trl_implicit"),
    "kto": ("src_tgt", "trl", "alpaca", "sharegpt"),
    "prompts": ("src_tgt", "messages", "sharegpt", "alpaca", "trl"),
}
# What each kind of stage data reads as, and the format table it is detected from.
KINDS = {"sft": "sft", "dpo": "preference", "kto": "kto", "rl": "prompts", "infer": "prompts"}


def data_paths(paths) -> list[str]:
    """A data setting's paths: one, or a list of them."""
    return [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]


def check_format(key: str, fmt: str, kind: str) -> None:
    """ConfigError unless `fmt` is `auto` or a format of `kind` (a key of FORMATS); `key` names the setting."""
    allowed = ("auto",) + FORMATS[kind]
    if fmt not in allowed:
        raise ConfigError(f"{key}={fmt!r}: allowed: {', '.join(allowed)}")


def check_weights(weights: Optional[Sequence[float]], n_paths: int, key: str = "stage.data.weights") -> None:
    """ConfigError (naming `key`) unless `weights` is None or one non-negative weight per path with a positive
    sum. The one rule for every stage that blends data (pretraining's indexed sets too; llmx.data.mixture)."""
    if weights is None:
        return
    weights = list(weights)
    if len(weights) != n_paths:
        raise ConfigError(f"{key}={weights!r}: needs one weight per path ({n_paths})")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights) \
            or not sum(weights) > 0:
        raise ConfigError(f"{key}={weights!r}: must be non-negative with a positive sum")


def check_data_config(d, kind: str, prefix: str = "stage.data") -> None:
    """A stage's `data` block (train: a path or a list of them, eval, format, weights) checked before anything
    is read: ConfigError naming the key. A path is a file, a `datasets` directory, or `dir:split`."""
    for name in ("train", "eval"):
        value = getattr(d, name, None)
        if value is None:
            continue
        paths = data_paths(value)
        if not paths:
            raise ConfigError(f"{prefix}.{name}=[]: name at least one data file")
        for i, path in enumerate(paths):
            key = f"{prefix}.{name}" + (f"[{i}]" if not isinstance(value, str) else "")
            base = path.rsplit(":", 1)[0] if not Path(path).exists() and ":" in path else path
            if not Path(base).exists():
                raise ConfigError(f"{key}={path!r}: no such file or dataset directory (local paths only: llmx never "
                                  "downloads)")
    check_format(f"{prefix}.format", d.format, KINDS[kind])
    check_weights(d.weights, len(data_paths(d.train)), f"{prefix}.weights")
