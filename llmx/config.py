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
    zero_padding: bool = False  # pack several examples per training sequence (eval stays unpacked)


@dataclass
class PretrainDataConfig:
    paths: List[str] = field(default_factory=lambda: ["${asset:demo/pretrain}"])  # .bin/.idx prefixes
    weights: Optional[List[float]] = None  # blending weights, one per path (None = equal)
    split: str = "949,50,1"  # train,valid,test shares of each dataset's documents
    seq_length: int = 128
    cache_dir: Optional[str] = None  # None = index-cache/ next to the first dataset


@dataclass
class PretrainEvalConfig:
    enabled: bool = True
    samples: int = 128  # validation samples for eval loss before and after training
    batch_size: int = 16


@dataclass
class PretrainStageConfig:
    runner: str = "pretrain"
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    continue_training: bool = False  # start from model.name_or_path's weights instead of random init


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    stage: Any = MISSING  # each stage file picks its own schema in its defaults list
    parallel: ParallelConfig = MISSING
    quant: QuantConfig = MISSING
    seed: int = 42
    device: str = "auto"  # auto | cpu | gpu
    plan: bool = False  # only print the per-device memory estimate of this layout (llmx.plan), run nothing
    device_memory_gb: Optional[float] = None  # memory of one device in GiB, for the plan's fits verdict


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/stage", name="sft", node=SftStageConfig)
    cs.store(group="schema/stage", name="pretrain", node=PretrainStageConfig)


register_configs()

# ------------------------------------------------------------------ validation

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "gpu")
LR_SCHEDULERS = ("cosine", "linear", "constant")
PEFT_METHODS = ("none", "lora", "prefix")
QUANT_ALGORITHMS = ("none",)  # the quantization issue adds the rest
RUNNERS = ("sft", "pretrain")
# Families whose attention takes a block-diagonal [b, 1, s, s] mask with per-example position ids, so a
# packed forward equals separate ones (tests/test_packing.py). Not OPT (it derives positions from a 2-D
# mask and takes no 4-D one) nor Yuan (its localized-filtering convolution mixes neighbouring examples).
PACKING_FAMILIES = ("llama", "baichuan", "qwen", "qwen2", "mistral", "mixtral", "gemma", "chatglm2", "bloom", "gpt3")
# With a prefix cache these place positions after the prefix (Mistral rotary, GPT learned) or bias by
# absolute key position (BLOOM alibi), which per-example position ids cannot reproduce.
PACKING_WITHOUT_PREFIX = ("mistral", "bloom", "gpt3")


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
    _validate_parallel(cfg)
    _one_of("quant.algorithm", cfg.quant.algorithm, QUANT_ALGORITHMS)
    _one_of("device", cfg.device, DEVICES)
    _require(cfg.device_memory_gb is None or cfg.device_memory_gb > 0, "device_memory_gb", cfg.device_memory_gb, "must be > 0 (GiB)")
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    _one_of("stage.runner", cfg.stage.runner, RUNNERS)
    if cfg.stage.runner in ("sft", "pretrain"):
        # ChatGLM v1 needs [gMASK]/bos inputs, 4-D masks and 2-D position ids that only its own tokenizer builds.
        _require(cfg.model.family != "chatglm", "model.family", cfg.model.family,
                 "ChatGLM v1 is not trainable by llmx yet; use model=chatglm2 (ChatGLM2/ChatGLM3)")
    if cfg.stage.runner == "sft":
        _validate_sft_stage(cfg.stage, cfg.model)
    if cfg.stage.runner == "pretrain":
        _validate_pretrain_stage(cfg.stage, cfg.model)


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


# Hyperparameter names differ per family (BLOOM: n_head/n_layer; ChatGLM2: multi_query_group_num).
_HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads")
_KV_HEADS_KEYS = ("num_key_value_heads", "multi_query_group_num")
_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_VOCAB_KEYS = ("vocab_size", "padded_vocab_size")


def world_size(p: DictConfig) -> int:
    """Processes a layout needs: one per (dp, sharding, pp, tp) coordinate."""
    return p.dp * p.tp * p.pp * p.sharding


def launched_processes() -> Optional[int]:
    """The world size set by a launcher this process runs under (paddle.distributed.launch
    sets PADDLE_TRAINERS_NUM), or None for a plain shell, where llmx starts the processes itself."""
    n = os.environ.get("PADDLE_TRAINERS_NUM")
    return int(n) if n else None


def model_hparams(m: DictConfig) -> Dict[str, Any]:
    """The model's hyperparameters as given (paddle-free): the pretrained dir's config.json when
    there is one, else `sizes[size]`; `overrides` win. Keys left out take the config class defaults."""
    raw: Dict[str, Any] = {}
    config_json = Path(m.name_or_path, "config.json") if m.name_or_path else None
    if config_json is not None and config_json.is_file():
        import json

        raw = json.loads(config_json.read_text())
    elif m.size in m.sizes:
        raw = OmegaConf.to_container(m.sizes[m.size])
    raw.update(OmegaConf.to_container(m.overrides))
    return raw


def model_dims(m: DictConfig) -> Dict[str, Any]:
    """The model hyperparameters that parallel layouts depend on (paddle-free, see model_hparams)."""
    raw = model_hparams(m)

    def first(keys):
        return next((raw[k] for k in keys if raw.get(k) is not None), None)

    heads = first(_HEADS_KEYS)
    kv = raw.get("num_key_value_heads")
    if kv is None:  # PaddleNLP's ChatGLM2 always uses its multi_query_group_num KV groups (HF's multi_query_attention flag is not read)
        kv = raw.get("multi_query_group_num")
    return {"heads": heads, "kv_heads": kv if kv is not None else heads,
            "layers": first(_LAYERS_KEYS), "vocab": first(_VOCAB_KEYS)}


def _validate_parallel(cfg: DictConfig) -> None:
    """Layouts: world = dp*tp*pp*sharding processes. From a plain shell llmx starts that many
    itself (CPU: any number, over gloo; GPU: at most the visible GPUs, checked by the launcher);
    under a launcher the world it set must match."""
    p, m = cfg.parallel, cfg.model
    for key in ("dp", "tp", "pp", "sharding", "vpp"):
        _positive(f"parallel.{key}", p[key])
    _require(p.sharding_stage in (0, 1, 2, 3), "parallel.sharding_stage", p.sharding_stage, "allowed: 0 (off), 1, 2, 3")
    _require(p.sharding == 1 or p.sharding_stage > 0, "parallel.sharding", p.sharding,
             "needs parallel.sharding_stage 1, 2 or 3 (0 turns sharding off)")
    _require(p.sharding_stage == 0 or p.sharding > 1, "parallel.sharding_stage", p.sharding_stage,
             "needs parallel.sharding >= 2 (the sharding degree)")
    world = world_size(p)
    launched = launched_processes()
    if launched is not None and launched != world:
        raise ConfigError(f"parallel: dp*tp*pp*sharding = {world} but {launched} processes "
                          f"(dp={p.dp} tp={p.tp} pp={p.pp} sharding={p.sharding})")
    if p.pp > 1:
        _require(m.pipeline_class is not None, "parallel.pp", p.pp,
                 f"model family {m.family} has no pipeline class in PaddleNLP (model.pipeline_class is null)")
        _require(p.sharding_stage not in (2, 3), "parallel.sharding_stage", p.sharding_stage,
                 "pp>1 needs sharding stage1 (Paddle has no pipeline with sharding stage 2/3)")
    _require(p.vpp == 1 or p.pp > 1, "parallel.vpp", p.vpp, "virtual pipeline stages need parallel.pp > 1")
    _require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel", True, "needs parallel.tp > 1")
    # PaddleNLP's sequence-parallel decoders reshape activations to [-1, seq_length, ...]: every
    # batch must be exactly seq_length tokens long, which padded SFT batches are not.
    _require(not p.sequence_parallel or cfg.stage.runner != "sft", "parallel.sequence_parallel", True,
             "needs fixed-length batches of model seq_length tokens; the sft runner pads per batch")
    if m.size not in m.sizes and not m.name_or_path:
        return  # model.size is reported by _validate_model
    dims = model_dims(m)
    for key, what in (("heads", "attention heads"), ("kv_heads", "KV heads"), ("vocab", "vocab size")):
        n = dims[key]
        _require(n is None or n % p.tp == 0, "parallel.tp", p.tp, f"must divide the model's {what} ({n})")
    n = dims["layers"]
    _require(n is None or n % (p.pp * p.vpp) == 0, "parallel.pp", p.pp,
             f"pp*vpp = {p.pp * p.vpp} must divide the model's layers ({n})")
    peft = cfg.stage.get("peft") if "stage" in cfg else None
    if peft is not None and peft.method != "none":
        # An adapter's random init and its export would be per tensor-parallel shard / pipeline stage.
        _require(p.tp == 1 and p.pp == 1, "stage.peft.method", peft.method,
                 "adapters train with dp or sharding layouts only (not yet with parallel.tp or parallel.pp > 1)")
    train = cfg.stage.get("train") if "stage" in cfg else None
    if train is not None and "batch_size" in train and "grad_accum" in train:
        replicas = p.dp * p.sharding  # data-parallel replicas share one global batch
        _require(train.grad_accum % replicas == 0 or train.batch_size % replicas == 0, "parallel", f"dp*sharding={replicas}",
                 f"must divide stage.train.grad_accum ({train.grad_accum}) or stage.train.batch_size ({train.batch_size}): "
                 "the global batch stays batch_size*grad_accum")


def _validate_train(t: DictConfig) -> None:
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


def _validate_pretrain_stage(s: DictConfig, model: DictConfig) -> None:
    d = s.data
    _require(len(d.paths) >= 1, "stage.data.paths", list(d.paths), "needs at least one .bin/.idx prefix")
    for i, prefix in enumerate(d.paths):
        base = prefix[:-4] if prefix.endswith((".bin", ".idx")) else prefix
        for ext in (".bin", ".idx"):
            _existing(f"stage.data.paths[{i}]", base + ext, "file")
    if d.weights is not None:
        _require(len(d.weights) == len(d.paths), "stage.data.weights", list(d.weights),
                 f"needs one weight per path ({len(d.paths)})")
        _require(all(w >= 0 for w in d.weights) and sum(d.weights) > 0, "stage.data.weights", list(d.weights),
                 "must be non-negative with a positive sum")
    _positive("stage.data.seq_length", d.seq_length, 2)
    _validate_train(s.train)
    _positive("stage.eval.samples", s.eval.samples)
    _positive("stage.eval.batch_size", s.eval.batch_size)
    _require(not s.continue_training or model.name_or_path is not None, "stage.continue_training", True,
             "needs model.name_or_path (the checkpoint directory to continue from)")


def _validate_sft_stage(s: DictConfig, model: DictConfig) -> None:
    d, t, p = s.data, s.train, s.peft
    _existing("stage.data.train", d.train, "file")
    _existing("stage.data.eval", d.eval, "file")
    _positive("stage.data.max_length", d.max_length, 2)
    _require(1 <= d.src_length < d.max_length, "stage.data.src_length", d.src_length,
             f"must be between 1 and stage.data.max_length-1 ({d.max_length - 1})")
    _validate_train(t)
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
    _require(not s.zero_padding or model.family in PACKING_FAMILIES, "stage.zero_padding", True,
             f"model family {model.family} cannot keep packed examples apart; supported: {', '.join(PACKING_FAMILIES)}")
    _require(not (s.zero_padding and p.method == "prefix" and model.family in PACKING_WITHOUT_PREFIX), "stage.zero_padding",
             True, f"not with prefix tuning for model family {model.family} (not for: {', '.join(PACKING_WITHOUT_PREFIX)})")
    _positive("stage.eval.max_new_tokens", s.eval.max_new_tokens)
    _positive("stage.eval.batch_size", s.eval.batch_size)
    _require(s.eval.num_samples == -1 or s.eval.num_samples >= 1, "stage.eval.num_samples", s.eval.num_samples, "must be >= 1, or -1 for all")
    _positive("stage.eval.samples_to_log", s.eval.samples_to_log, 0)
