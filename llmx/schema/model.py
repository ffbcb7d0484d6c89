"""The `model` group: which family, size or checkpoint, dtype and kernels; its hyperparameters as given.

Everything here reads files only (config.json, a GGUF's metadata): a Hugging Face directory or a GGUF file
is described without converting it (llmx.sources), so validation and `plan` import no paddle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from llmx import rope
from llmx.errors import ConfigError
from llmx.schema.checks import existing, one_of, require
from llmx.sources import resolve as resolve_source

DTYPES = ("float32", "bfloat16", "float16")
FUSED_OPS = ("auto", "on", "off")  # llmx.ops' modes


@dataclass
class ModelConfig:
    family: str = MISSING  # a family of llmx.families (its PaddleNLP classes, adapters, fixes)
    size: str = "tiny"  # a key of `sizes`
    name_or_path: Optional[str] = None  # local pretrained dir; None = random init
    tokenizer: Optional[str] = None  # None = name_or_path, or the bundled tiny tokenizer
    dtype: str = "float32"
    sizes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Hyperparameters over the size or the pretrained config.json: `model.overrides.hidden_size=128`.
    overrides: Dict[str, Any] = field(default_factory=dict)
    # llmx.ops' fused CPU kernels (csrc/) in place of matching layers: auto (when they build, built
    # once per machine; otherwise one warning and Paddle's composed ops), on (fail when they do not), off.
    fused_ops: str = "auto"
    # RoPE scaling for long context (llmx.rope): {rope_type: linear|dynamic|yarn|llama3, factor: ..., ...} with the
    # keys transformers names (`type` is read as rope_type). Empty = the checkpoint's config.json rope_scaling, if
    # any; {rope_type: default} = none even where the checkpoint has one.
    rope_scaling: Dict[str, Any] = field(default_factory=dict)
    # Pickled files (.pdparams, .pdopt, RNG state) load as data only (llmx.safe_pickle): a pickle that names
    # code is refused. true = load them unrestricted, for files you trust (the run's log says so).
    trust_pickle: bool = False


def model_family(m: DictConfig):
    from llmx.families import family

    return family(m.family)


def validate_model(m: DictConfig) -> None:
    fam = model_family(m)
    sizes = list(m.sizes.keys())
    require(m.size in sizes, "model.size", m.size, f"allowed for {m.family}: {', '.join(sizes)}")
    one_of("model.dtype", m.dtype, DTYPES)
    one_of("model.fused_ops", m.fused_ops, FUSED_OPS)
    existing("model.name_or_path", m.name_or_path, "directory or .gguf file")
    if m.name_or_path:
        resolve_source(m.name_or_path)  # a model, adapter or finished run directory, an HF directory or a GGUF file
    existing("model.tokenizer", m.tokenizer, "tokenizer directory")
    fam.check_hyperparameter_names(m.sizes[m.size].keys(), f"model.sizes.{m.size}")
    fam.check_hyperparameter_names(m.overrides.keys(), "model.overrides")
    validate_rope_scaling(m, fam)


def validate_rope_scaling(m: DictConfig, fam) -> None:
    """model.rope_scaling, or else the one the checkpoint's config.json (or the size) carries: a scaling llmx
    computes, for a family whose rotary layers llmx scales."""
    given = m.get("rope_scaling")
    raw = model_hparams(m)
    if given:
        scaling, where = OmegaConf.to_container(given), "model.rope_scaling"
    else:
        scaling = raw.get("rope_scaling")
        where = f"{m.name_or_path}: config.json rope_scaling" if m.name_or_path else f"model.sizes.{m.size}.rope_scaling"
    rope.check(scaling, where)
    if rope.scaling_type(scaling) is None:
        return
    if fam.rope_layout is None:
        reason = fam.no_rope_scaling or "its positions are not rotary embeddings llmx scales"
        raise ConfigError(f"{where}: model family {fam.name} takes no RoPE scaling ({reason})")
    if fam.hyperparameters(raw).get("alibi"):
        raise ConfigError(f"{where}: model family {fam.name} with alibi=true has ALiBi positions, no rotary embeddings")


def model_hparams(m: DictConfig) -> Dict[str, Any]:
    """The model's hyperparameters as given (paddle-free): the pretrained model's config.json when there is one
    (an HF directory's or a GGUF's as its conversion will hold it), else `sizes[size]`; `overrides` win. Keys left
    out take the config class defaults."""
    raw: Dict[str, Any] = {}
    if m.name_or_path:
        raw = resolve_source(m.name_or_path).llmx_config(m.family)
    elif m.size in m.sizes:
        raw = OmegaConf.to_container(m.sizes[m.size])
    raw.update(OmegaConf.to_container(m.overrides))
    return raw


def model_dim(m: DictConfig, name: str) -> Optional[int]:
    """A hyperparameter of the model as given (size or config.json, with overrides), or the class default."""
    if not (m.size in m.sizes or m.name_or_path):
        return None
    return model_family(m).hyperparameters(model_hparams(m)).get(name)


def quantized(m: DictConfig) -> bool:
    return bool(m.name_or_path) and resolve_source(m.name_or_path).quantized
