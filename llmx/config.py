"""Config schemas (registered in Hydra's ConfigStore) and cross-field validation.

Hydra + OmegaConf check key names and types while composing; `validate` checks
values and combinations. Both report through `ConfigError`, whose message is one
line naming the key, the bad value and what is allowed. This module imports no
paddle, so composing and validating a config stays fast.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CONF_DIR = PACKAGE_DIR.parent / "conf"


class UserError(ValueError):
    """Bad input from the user; the message is the one line shown to them."""

    kind = "error"


class ConfigError(UserError):
    """A bad config key, value or combination."""

    kind = "config error"


class DataError(UserError):
    """A bad data file; the message starts with `path:line:`."""

    kind = "data error"


def asset_path(relative: str) -> str:
    return str(ASSETS_DIR / relative)


# `${asset:demo/sft_train.jsonl}` points into the bundled assets wherever llmx is installed.
if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset_path)


# --------------------------------------------------------------------- schemas


@dataclass
class ModelConfig:
    family: str = MISSING
    architecture: str = MISSING  # class name in paddlenlp.transformers
    config_class: str = MISSING  # class name in paddlenlp.transformers
    size: str = "tiny"  # a key of `sizes`
    name_or_path: Optional[str] = None  # local pretrained dir; None = random init
    tokenizer: Optional[str] = None  # None = name_or_path, or the bundled tiny tokenizer
    dtype: str = "float32"
    lora_target_modules: List[str] = field(default_factory=list)
    prefix_tuning: bool = False
    pipeline_class: Optional[str] = None
    sizes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ParallelConfig:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    sharding: int = 1  # sharding parallel degree
    sharding_stage: int = 0  # 0 = off, 1/2/3 = ZeRO stage
    vpp: int = 1  # virtual pipeline stages per rank
    sequence_parallel: bool = False


@dataclass
class QuantConfig:
    algorithm: str = "none"
    bits: Optional[int] = None
    group_size: int = -1
    calibration_samples: int = 0


@dataclass
class SftDataConfig:
    train: str = "${asset:demo/sft_train.jsonl}"
    eval: Optional[str] = "${asset:demo/sft_eval.jsonl}"
    max_length: int = 128  # tokens per example (prompt + answer)
    src_length: int = 96  # at most this many prompt tokens are kept (from the right)


@dataclass
class TrainConfig:
    max_steps: int = 800  # -1: run `epochs` epochs
    epochs: float = 1.0
    batch_size: int = 16  # per device
    grad_accum: int = 1
    lr: float = 3e-3
    lr_scheduler: str = "cosine"
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 100
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 = keep all
    progress_bar: bool = True


@dataclass
class PeftConfig:
    method: str = "none"  # none | lora | prefix
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: Optional[List[str]] = None  # None = the model's lora_target_modules
    num_prefix_tokens: int = 16


@dataclass
class EvalConfig:
    enabled: bool = True
    max_new_tokens: int = 16
    num_samples: int = 64  # held-out examples generated for exact match; -1 = all
    batch_size: int = 16
    samples_to_log: int = 8  # generations written to samples.jsonl


@dataclass
class SftStageConfig:
    runner: str = "sft"
    data: SftDataConfig = field(default_factory=SftDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    merge_adapter: bool = False  # LoRA only: also write the merged full model


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    stage: Any = MISSING  # each stage file picks its own schema in its defaults list
    parallel: ParallelConfig = MISSING
    quant: QuantConfig = MISSING
    seed: int = 42
    device: str = "auto"  # auto | cpu | gpu


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/stage", name="sft", node=SftStageConfig)


register_configs()

# ------------------------------------------------------------------ validation

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "gpu")
LR_SCHEDULERS = ("cosine", "linear", "constant")
PEFT_METHODS = ("none", "lora", "prefix")
QUANT_ALGORITHMS = ("none",)  # the quantization issue adds the rest
RUNNERS = ("sft",)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r}: {allowed}")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        _fail(key, value, allowed)


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    _require(value in allowed, key, value, f"allowed: {', '.join(map(str, allowed))}")


def _positive(key: str, value: Any, minimum: float = 1) -> None:
    _require(value >= minimum, key, value, f"must be >= {minimum}")


def _existing(key: str, value: Optional[str], what: str) -> None:
    if value is not None and not os.path.exists(value):
        _fail(key, value, f"no such {what} (local paths only: llmx never downloads)")


def validate(cfg: DictConfig) -> None:
    """Check values and combinations; raise ConfigError with one line on the first problem."""
    _check_known_keys(cfg, "")
    _validate_model(cfg.model)
    _validate_parallel(cfg.parallel)
    _one_of("quant.algorithm", cfg.quant.algorithm, QUANT_ALGORITHMS)
    _one_of("device", cfg.device, DEVICES)
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    _one_of("stage.runner", cfg.stage.runner, RUNNERS)
    if cfg.stage.runner == "sft":
        _validate_sft_stage(cfg.stage, cfg.model)


def _check_known_keys(node: DictConfig, prefix: str) -> None:
    """`+key=value` adds keys past the schemas' struct check; a key no schema declares is a typo."""
    schema = OmegaConf.get_type(node)
    names = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if names is not None and key not in names:
            value = node[key]
            _fail(f"{prefix}{key}", OmegaConf.to_container(value) if isinstance(value, DictConfig) else value,
                  f"unknown key (allowed here: {', '.join(names)})")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and names is not None:  # free-form dicts (sizes, overrides) take any key
            _check_known_keys(child, f"{prefix}{key}.")


def _validate_model(m: DictConfig) -> None:
    sizes = list(m.sizes.keys())
    _require(m.size in sizes, "model.size", m.size, f"allowed for {m.family}: {', '.join(sizes)}")
    _one_of("model.dtype", m.dtype, DTYPES)
    _existing("model.name_or_path", m.name_or_path, "directory")
    _existing("model.tokenizer", m.tokenizer, "tokenizer directory")


def _validate_parallel(p: DictConfig) -> None:
    for key in ("dp", "tp", "pp", "sharding", "vpp"):
        _positive(f"parallel.{key}", p[key])
    _require(p.sharding_stage in (0, 1, 2, 3), "parallel.sharding_stage", p.sharding_stage, "allowed: 0 (off), 1, 2, 3")
    world = p.dp * p.tp * p.pp * p.sharding
    # Multi-process launching arrives with the distributed engine; until then say so plainly.
    if world != 1:
        raise ConfigError(f"parallel: dp*tp*pp*sharding = {world} but this build runs 1 process "
                          "(multi-process layouts arrive with the distributed engine)")


def _validate_sft_stage(s: DictConfig, model: DictConfig) -> None:
    d, t, p = s.data, s.train, s.peft
    # ChatGLM v1 needs [gMASK]/bos inputs, 4-D masks and 2-D position ids that only its own tokenizer builds.
    _require(model.family != "chatglm", "model.family", model.family,
             "ChatGLM v1 is not trainable by the sft runner yet; use model=chatglm2 (ChatGLM2/ChatGLM3)")
    _existing("stage.data.train", d.train, "file")
    _existing("stage.data.eval", d.eval, "file")
    _positive("stage.data.max_length", d.max_length, 2)
    _require(1 <= d.src_length < d.max_length, "stage.data.src_length", d.src_length,
             f"must be between 1 and stage.data.max_length-1 ({d.max_length - 1})")
    _require(t.max_steps == -1 or t.max_steps >= 1, "stage.train.max_steps", t.max_steps, "must be >= 1, or -1 to use epochs")
    _require(t.max_steps != -1 or t.epochs > 0, "stage.train.epochs", t.epochs, "must be > 0 when max_steps=-1")
    _positive("stage.train.batch_size", t.batch_size)
    _positive("stage.train.grad_accum", t.grad_accum)
    _require(t.lr > 0, "stage.train.lr", t.lr, "must be > 0")
    _one_of("stage.train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS)
    _positive("stage.train.warmup_steps", t.warmup_steps, 0)
    _positive("stage.train.weight_decay", t.weight_decay, 0)
    _require(t.max_grad_norm >= 0, "stage.train.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 disables clipping)")
    _positive("stage.train.logging_steps", t.logging_steps)
    _positive("stage.train.save_steps", t.save_steps)
    _positive("stage.train.keep_checkpoints", t.keep_checkpoints, 0)
    _one_of("stage.peft.method", p.method, PEFT_METHODS)
    if p.method == "lora":
        _positive("stage.peft.lora_r", p.lora_r)
        _positive("stage.peft.lora_alpha", p.lora_alpha)
        _require(0 <= p.lora_dropout < 1, "stage.peft.lora_dropout", p.lora_dropout, "must be in [0, 1)")
        targets = p.target_modules if p.target_modules is not None else model.lora_target_modules
        _require(len(targets) > 0, "stage.peft.target_modules", targets,
                 f"needs at least one module regex (model {model.family} defines none)")
    if p.method == "prefix":
        _require(model.prefix_tuning, "stage.peft.method", "prefix", f"prefix tuning is not supported for model family {model.family}")
        _positive("stage.peft.num_prefix_tokens", p.num_prefix_tokens)
    _require(not s.merge_adapter or p.method == "lora", "stage.merge_adapter", True, "needs stage.peft.method=lora")
    _positive("stage.eval.max_new_tokens", s.eval.max_new_tokens)
    _positive("stage.eval.batch_size", s.eval.batch_size)
    _require(s.eval.num_samples == -1 or s.eval.num_samples >= 1, "stage.eval.num_samples", s.eval.num_samples, "must be >= 1, or -1 for all")
    _positive("stage.eval.samples_to_log", s.eval.samples_to_log, 0)
