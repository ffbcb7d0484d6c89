"""The run schema and the validation every run shares (paddle-free).

Hydra + OmegaConf check key names and types while composing; `validate` checks
values and combinations of the groups every run has (model, parallel, quant) and
then the stage's own `validate`. Errors are one line naming the key, the bad value
and what is allowed. Each stage module holds its own config dataclass; the pieces
several stages share (training loop, adapters) are here.

llmx.stages puts these schemas and the stages' into Hydra's ConfigStore
(`register_configs`) and validates a whole run (`validate`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from llmx.errors import ConfigError, DataError, UserError  # noqa: F401  (re-exported: callers raise them)
from llmx.sources import resolve as resolve_source

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CONF_DIR = PACKAGE_DIR.parent / "conf"


def asset_path(relative: str) -> str:
    return str(ASSETS_DIR / relative)


# --------------------------------------------------------------------- schemas


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
class TrainConfig:
    """The training loop of every training stage."""

    max_steps: int = 800  # -1: run `epochs` epochs
    epochs: float = 1.0
    batch_size: int = 16  # samples per micro-batch; batch_size * grad_accum samples per step, whatever the layout
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
    """Adapters over a frozen base, for every stage that fine-tunes."""

    method: str = "none"  # none | lora | prefix
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: Optional[List[str]] = None  # None = the family's LoRA targets (llmx.families)
    num_prefix_tokens: int = 16


@dataclass
class RunConfig:
    # A default (not MISSING) so that llmx.stages.register_configs can mark `model.overrides` open for new keys.
    model: ModelConfig = field(default_factory=ModelConfig)
    stage: Any = MISSING  # each stage file picks its schema (`/schema/stage/<runner>`) in its defaults list
    parallel: ParallelConfig = MISSING
    quant: QuantConfig = MISSING
    seed: int = 42
    device: str = "auto"  # auto | cpu | gpu
    verbose: bool = False  # also show PaddleNLP's logs and library warnings on the console (llmx.log has them anyway)
    plan: bool = False  # only print the per-device memory estimate of this layout (llmx.plan), run nothing
    device_memory_gb: Optional[float] = None  # memory of one device in GiB, for the plan's fits verdict


# ------------------------------------------------------------------ validation

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "gpu")
LR_SCHEDULERS = ("cosine", "linear", "constant")
PEFT_METHODS = ("none", "lora", "prefix")
QUANT_ALGORITHMS = ("none",)  # the quantization issue adds the rest


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r}: {allowed}")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        fail(key, value, allowed)


def one_of(key: str, value: Any, allowed: tuple) -> None:
    require(value in allowed, key, value, f"allowed: {', '.join(map(str, allowed))}")


def positive(key: str, value: Any, minimum: float = 1) -> None:
    require(value >= minimum, key, value, f"must be >= {minimum}")


def existing(key: str, value: Optional[str], what: str) -> None:
    if value is not None and not os.path.exists(value):
        fail(key, value, f"no such {what} (local paths only: llmx never downloads)")


def validate_common(cfg: DictConfig) -> None:
    """Check the values and combinations of what every run has (llmx.stages.validate adds the
    stage's own rules); raise ConfigError with one line on the first problem."""
    check_known_keys(cfg, "")
    validate_model(cfg.model)
    validate_parallel(cfg)
    one_of("quant.algorithm", cfg.quant.algorithm, QUANT_ALGORITHMS)
    one_of("device", cfg.device, DEVICES)
    require(cfg.device_memory_gb is None or cfg.device_memory_gb > 0, "device_memory_gb", cfg.device_memory_gb,
            "must be > 0 (GiB)")
    require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")


def check_known_keys(node: DictConfig, prefix: str) -> None:
    """`+key=value` adds keys past the schemas' struct check; a key no schema declares is a typo."""
    schema = OmegaConf.get_type(node)
    names = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if names is not None and key not in names:
            value = node[key]
            fail(f"{prefix}{key}", OmegaConf.to_container(value) if isinstance(value, DictConfig) else value,
                 f"unknown key (allowed here: {', '.join(names)})")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and names is not None:  # free-form dicts (sizes, overrides) take any key
            check_known_keys(child, f"{prefix}{key}.")


def model_family(m: DictConfig):
    from llmx.families import family

    return family(m.family)


def validate_model(m: DictConfig) -> None:
    fam = model_family(m)
    sizes = list(m.sizes.keys())
    require(m.size in sizes, "model.size", m.size, f"allowed for {m.family}: {', '.join(sizes)}")
    one_of("model.dtype", m.dtype, DTYPES)
    existing("model.name_or_path", m.name_or_path, "directory")
    if m.name_or_path:
        resolve_source(m.name_or_path)  # a model, adapter or finished run directory
    existing("model.tokenizer", m.tokenizer, "tokenizer directory")
    fam.check_hyperparameter_names(m.sizes[m.size].keys(), f"model.sizes.{m.size}")
    fam.check_hyperparameter_names(m.overrides.keys(), "model.overrides")


def launched_processes() -> Optional[int]:
    """The world size set by a launcher this process runs under (paddle.distributed.launch
    sets PADDLE_TRAINERS_NUM), or None for a plain shell, where llmx starts the processes itself."""
    n = os.environ.get("PADDLE_TRAINERS_NUM")
    return int(n) if n else None


def model_hparams(m: DictConfig) -> Dict[str, Any]:
    """The model's hyperparameters as given (paddle-free): the pretrained dir's config.json when
    there is one, else `sizes[size]`; `overrides` win. Keys left out take the config class defaults."""
    raw: Dict[str, Any] = {}
    config_json = None
    if m.name_or_path:
        config_json = Path(resolve_source(m.name_or_path).model_dir, "config.json")
    if config_json is not None and config_json.is_file():
        import json

        raw = json.loads(config_json.read_text())
    elif m.size in m.sizes:
        raw = OmegaConf.to_container(m.sizes[m.size])
    raw.update(OmegaConf.to_container(m.overrides))
    return raw


def validate_parallel(cfg: DictConfig) -> None:
    """Layouts: world = dp*tp*pp*sharding processes. From a plain shell llmx starts that many
    itself (CPU: any number, over gloo; GPU: at most the visible GPUs, checked by the launcher);
    under a launcher the world it set must match."""
    from llmx.layout import Layout, batching_problem

    p, m = cfg.parallel, cfg.model
    for key in ("dp", "tp", "pp", "sharding", "vpp"):
        positive(f"parallel.{key}", p[key])
    require(p.sharding_stage in (0, 1, 2, 3), "parallel.sharding_stage", p.sharding_stage, "allowed: 0 (off), 1, 2, 3")
    require(p.sharding == 1 or p.sharding_stage > 0, "parallel.sharding", p.sharding,
            "needs parallel.sharding_stage 1, 2 or 3 (0 turns sharding off)")
    require(p.sharding_stage == 0 or p.sharding > 1, "parallel.sharding_stage", p.sharding_stage,
            "needs parallel.sharding >= 2 (the sharding degree)")
    layout = Layout.of(p)
    launched = launched_processes()
    if launched is not None and launched != layout.world:
        raise ConfigError(f"parallel: dp*tp*pp*sharding = {layout.world} but {launched} processes ({layout.describe()})")
    fam = model_family(m)
    require(p.tp == 1 or not fam.no_tensor_parallel, "parallel.tp", p.tp,
            f"model family {m.family} cannot be split over tensor-parallel ranks: {fam.no_tensor_parallel}")
    if p.pp > 1:
        require(fam.pipeline_class is not None, "parallel.pp", p.pp,
                f"model family {m.family} has no pipeline class in PaddleNLP")
        require(p.sharding_stage not in (2, 3), "parallel.sharding_stage", p.sharding_stage,
                "pp>1 needs sharding stage1 (Paddle has no pipeline with sharding stage 2/3)")
    require(p.vpp == 1 or p.pp > 2, "parallel.vpp", p.vpp,
            "virtual pipeline stages need parallel.pp > 2 (Paddle's interleaved schedule asserts it)")
    require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel", True, "needs parallel.tp > 1")
    if m.size in m.sizes or m.name_or_path:
        dims = fam.dims(model_hparams(m))
        for key, what in (("heads", "attention heads"), ("kv_heads", "KV heads"), ("vocab", "vocab size")):
            n = dims[key]
            require(n is None or n % p.tp == 0, "parallel.tp", p.tp, f"must divide the model's {what} ({n})")
        n = dims["layers"]
        require(n is None or n % (p.pp * p.vpp) == 0, "parallel.pp", p.pp,
                f"pp*vpp = {p.pp * p.vpp} must divide the model's layers ({n})")
    train = OmegaConf.select(cfg, "stage.train")
    if train is not None and "batch_size" in train and "grad_accum" in train:
        problem = batching_problem(train.batch_size, train.grad_accum, layout)
        require(problem is None, "parallel", f"dp*sharding={layout.replicas}", problem or "")
    if layout.world > 1 and (p.vpp > 1 or p.sharding_stage == 3) and not cfg.plan and on_cpu(cfg.device):
        # Checked on these machines (paddle 3.3.1 CPU over gloo): the interleaved schedule's p2p exchanges
        # deadlock on gloo's synchronous send/recv; GroupShardedStage3 keeps parameter shards on CUDA places.
        require(p.vpp == 1, "parallel.vpp", p.vpp, "virtual pipeline stages do not run on CPU: the interleaved "
                "schedule's exchanges deadlock over gloo (run vpp > 1 on GPUs; on CPU use parallel.vpp=1)")
        require(p.sharding_stage != 3, "parallel.sharding_stage", 3, "sharding stage 3 does not run on CPU: Paddle's "
                "GroupShardedStage3 keeps parameter shards on GPUs (on CPU use sharding stage 1 or 2)")


def on_cpu(device: str) -> bool:
    """Will the ranks run on CPU? (device=cpu, or auto without a GPU this paddle build can use.)"""
    from llmx.devices import visible_gpus

    return device == "cpu" or (device == "auto" and not visible_gpus())


def validate_trainable(cfg: DictConfig) -> None:
    """For stages that train the model: the family must be trainable by llmx."""
    fam = model_family(cfg.model)
    require(not fam.not_trainable, "model.family", cfg.model.family, fam.not_trainable)


def validate_train(t: DictConfig) -> None:
    require(t.max_steps == -1 or t.max_steps >= 1, "stage.train.max_steps", t.max_steps, "must be >= 1, or -1 to use epochs")
    require(t.max_steps != -1 or t.epochs > 0, "stage.train.epochs", t.epochs, "must be > 0 when max_steps=-1")
    positive("stage.train.batch_size", t.batch_size)
    positive("stage.train.grad_accum", t.grad_accum)
    require(t.lr > 0, "stage.train.lr", t.lr, "must be > 0")
    one_of("stage.train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS)
    positive("stage.train.warmup_steps", t.warmup_steps, 0)
    positive("stage.train.weight_decay", t.weight_decay, 0)
    require(t.max_grad_norm >= 0, "stage.train.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 disables clipping)")
    positive("stage.train.logging_steps", t.logging_steps)
    positive("stage.train.save_steps", t.save_steps)
    positive("stage.train.keep_checkpoints", t.keep_checkpoints, 0)


def validate_peft(cfg: DictConfig) -> None:
    p, m, par = cfg.stage.peft, cfg.model, cfg.parallel
    fam = model_family(m)
    one_of("stage.peft.method", p.method, PEFT_METHODS)
    if p.method == "lora":
        positive("stage.peft.lora_r", p.lora_r)
        positive("stage.peft.lora_alpha", p.lora_alpha)
        require(0 <= p.lora_dropout < 1, "stage.peft.lora_dropout", p.lora_dropout, "must be in [0, 1)")
        targets = p.target_modules if p.target_modules is not None else fam.lora_targets
        require(len(targets) > 0, "stage.peft.target_modules", list(targets), "needs at least one module regex")
    if p.method == "prefix":
        require(fam.prefix_cache is not None, "stage.peft.method", "prefix",
                f"prefix tuning is not supported for model family {m.family}: {fam.no_prefix}")
        positive("stage.peft.num_prefix_tokens", p.num_prefix_tokens)
    if p.method == "prefix":
        require(par.pp == 1, "stage.peft.method", p.method,
                "prefix tuning does not run under pipeline parallelism (PaddleNLP: not implemented); use lora, or dp/tp")
        # PaddleNLP's prefix model cuts the prefix cache for tensor-parallel ranks by contiguous width (the
        # layers-x-k/v axis), not by attention heads, and each rank learns only its cut of a replicated prefix:
        # another model than one process's.
        require(par.tp == 1, "stage.peft.method", p.method,
                "prefix tuning does not split over tensor-parallel ranks in PaddleNLP 3.0.0b4 (its cut of the prefix "
                "cache is not per attention head); use lora, or dp/sharding")
