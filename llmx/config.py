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

from llmx.data.formats import check_data_config
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
    # llmx.ops' fused CPU kernels (csrc/) in place of matching layers: auto (when they build),
    # on (fail when they do not), off. Off by default: with auto, 8 of the suite's 488 tests fail
    # (static export through the wrapped forward, callers reading logits next to a loss, ...).
    fused_ops: str = "off"


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
    """Post-training quantization (stage=quantize; the algorithms are llmx.quant's)."""
    algorithm: str = "none"  # none | wint8 | wint4 | gptq | awq | a8w8 | a8w8c8 | fp8
    bits: Optional[int] = None  # informational: the algorithm fixes the format (int8, int4, e4m3)
    group_size: int = -1  # -1: one scale per output channel; else rows per scale group (64, 128)
    calib_path: Optional[str] = None  # SFT examples for calibration, any format (default: the bundled demo data)
    calib_samples: int = 128
    damp: float = 0.01  # gptq: damping, a fraction of the mean Hessian diagonal
    act_order: bool = False  # gptq: rows in decreasing Hessian-diagonal order (static groups)
    grid: int = 20  # awq: scale exponents tried in [0, 1]
    clip: bool = False  # awq: also search a clipping ratio
    smooth: bool = True  # a8w8: SmoothQuant migration (false: naive W8A8)
    alphas: List[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    per_channel: bool = True  # fp8: weight scales per output channel (false: per tensor)
    include_head: bool = False  # also quantize the LM head (embeddings and norms always stay float)


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

    method: str = "none"  # none | lora | prefix | lokr | vera | reft
    target_modules: Optional[List[str]] = None  # lora/lokr/vera: None = the family's LoRA targets (llmx.families)
    # LoRA and its variants
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    variant: str = "none"  # none | rslora (alpha/sqrt(r)) | pissa (SVD init) | mora (square rank) | moslora (r x r mixer)
    lora_plus_ratio: float = 1.0  # LoRA+: the B matrices learn this many times faster than A
    # Prefix tuning
    num_prefix_tokens: int = 16
    # LoKr: W + kron(W1, W2) with W2 low-rank when lokr_dim is small
    lokr_dim: int = 8
    lokr_alpha: float = 0.0  # 0 = lokr_dim (scale 1)
    lokr_factor: int = -1  # split each dimension as m x n with m = factor (-1: m, n closest to square)
    lokr_decompose_both: bool = False  # W1 low-rank as well
    # VeRA: per-layer scaling vectors b (out) and d (r) over a frozen rank-r pair (SVD-initialised)
    vera_r: int = 8
    # ReFT (LoReFT): low-rank interventions on hidden states at chosen positions
    reft_layers: Optional[List[int]] = None  # None = every layer
    reft_rank: int = 4
    reft_positions: str = "f7+l7"  # first n / last n prompt tokens: f<n>, l<n> or f<n>+l<n>
    reft_dropout: float = 0.0


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
PEFT_METHODS = ("none", "lora", "prefix", "lokr", "vera", "reft")
LORA_VARIANTS = ("none", "rslora", "pissa", "mora", "moslora")
MERGEABLE_METHODS = ("lora", "lokr", "vera")
QUANT_ALGORITHMS = ("none", "wint8", "wint4", "gptq", "awq", "a8w8", "a8w8c8", "fp8")


@dataclass
class DataFiles:
    """The data block every stage that reads examples shares; each stage sets its own defaults."""
    # a file (JSONL, JSON array, parquet) or a `datasets` directory (`dir:split` for a split), or a list of them
    train: Any = MISSING
    eval: Optional[str] = None  # held-out examples, the same kinds of path
    format: str = "auto"  # auto (detected per file) or a format name (llmx.data.formats)
    weights: Optional[List[float]] = None  # with several train paths: their mixing weights (None: all of each)


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
    if cfg.model.name_or_path:  # an HF checkpoint of another family: one line, before it is converted
        from llmx.convert.cache import check_hf_family

        check_hf_family(cfg)
    validate_model(cfg.model)
    validate_parallel(cfg)
    one_of("quant.algorithm", cfg.quant.algorithm, QUANT_ALGORITHMS)
    # Training on a quantized base (QLoRA-style) needs quantized-weight kernels with gradients: not on CPU here.
    require(cfg.quant.algorithm == "none" or cfg.stage.runner == "quantize", "quant.algorithm", cfg.quant.algorithm,
            "only stage=quantize applies a quant config; to train on a quantized model, train the float "
            "model and quantize the result (QLoRA-style training on a quantized base is not supported)")
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


FUSED_OPS = ("auto", "on", "off")  # llmx.ops' modes


def validate_model(m: DictConfig) -> None:
    fam = model_family(m)
    sizes = list(m.sizes.keys())
    require(m.size in sizes, "model.size", m.size, f"allowed for {m.family}: {', '.join(sizes)}")
    one_of("model.dtype", m.dtype, DTYPES)
    one_of("model.fused_ops", m.fused_ops, FUSED_OPS)
    existing("model.name_or_path", m.name_or_path, "directory or .gguf file")
    if m.name_or_path:
        resolve_source(m.name_or_path)  # a model, adapter or finished run directory, or a GGUF file
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
    require(p.tp == 1 and p.pp == 1 or not quantized(m), "model.name_or_path", m.name_or_path,
            "is a quantized checkpoint: it is dequantized per layer in one process; splitting it over tensor or "
            "pipeline ranks is not implemented (use parallel=single)")
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
    """For stages that train the model: the family must be trainable by llmx, the weights floating point."""
    fam = model_family(cfg.model)
    require(not fam.not_trainable, "model.family", cfg.model.family, fam.not_trainable)
    require(not quantized(cfg.model), "model.name_or_path", cfg.model.name_or_path,
            "is a quantized checkpoint (integer weights): train the float model, and quantize after training")


def validate_preference(cfg: DictConfig) -> None:
    """What the preference stages (dpo, kto) share: validate_pairs, beta and merge_adapter."""
    s = cfg.stage
    validate_pairs(cfg)
    require(not s.merge_adapter or s.peft.method == "lora", "stage.merge_adapter", True, "needs stage.peft.method=lora")
    require(s.beta > 0, "stage.beta", s.beta, "must be > 0")


def validate_pairs(cfg: DictConfig) -> None:
    """What the stages training on preference data (dpo, kto, rm) share: trainable model, data files and
    lengths, training loop, adapters (full or LoRA), eval batches, and the layouts they run under."""
    s, d, p = cfg.stage, cfg.stage.data, cfg.parallel
    validate_trainable(cfg)
    check_data_config(d, "kto" if s.runner == "kto" else "dpo")
    positive("stage.data.max_length", d.max_length, 4)
    require(1 <= d.max_prompt_length < d.max_length, "stage.data.max_prompt_length", d.max_prompt_length,
            f"must be between 1 and stage.data.max_length-1 ({d.max_length - 1})")
    validate_train(s.train)
    validate_peft(cfg)
    # trl's pipeline path needs the family's pipeline class built with trl's criterion as its loss
    # (config.dpo_config / kto_config) and its own micro-batch schedule; llmx builds pipeline parts with
    # the language-model loss (and a reward model's loss compares whole sequences).
    require(p.pp == 1, "parallel.pp", p.pp, f"stage={s.runner} does not run under pipeline parallelism "
            "(its loss compares whole sequences; llmx's pipeline parts carry the language-model loss); "
            "use dp, tp or sharding")
    require(not p.sequence_parallel, "parallel.sequence_parallel", True,
            "trl's packed preference batches are not cut along the sequence here")
    # (LoRA's reference is the base with its adapters switched off, the switch trl flips; other adapters
    # have none here)
    require(s.peft.method in ("none", "lora"), "stage.peft.method", s.peft.method,
            "preference stages train full weights (none) or LoRA adapters (lora)")
    positive("stage.eval.batch_size", s.eval.batch_size)


def quantized(m: DictConfig) -> bool:
    return bool(m.name_or_path) and resolve_source(m.name_or_path).quantized


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
    if p.method in ("lora", "lokr", "vera"):
        targets = p.target_modules if p.target_modules is not None else fam.lora_targets
        require(len(targets) > 0, "stage.peft.target_modules", list(targets), "needs at least one module regex")
    if p.method == "lora":
        positive("stage.peft.lora_r", p.lora_r)
        positive("stage.peft.lora_alpha", p.lora_alpha)
        require(0 <= p.lora_dropout < 1, "stage.peft.lora_dropout", p.lora_dropout, "must be in [0, 1)")
        one_of("stage.peft.variant", p.variant, LORA_VARIANTS)
        require(p.lora_plus_ratio > 0, "stage.peft.lora_plus_ratio", p.lora_plus_ratio, "must be > 0 (1 = plain LoRA)")
        # PaddleNLP 3.0.0b4's LoRAModel raises NotImplementedError for MoRA and MoSLoRA on tensor- or pipeline-
        # parallel models. PiSSA under tp would take the SVD of each rank's shard, not of the whole matrix (another
        # model than one process's), and llmx rewrites a PiSSA adapter as plain LoRA only from whole layers.
        require((par.tp == 1 and par.pp == 1) or p.variant in ("none", "rslora"), "stage.peft.variant", p.variant,
                "does not run under tensor or pipeline parallelism (PaddleNLP: not implemented for mora/moslora; "
                "pissa's SVD would be per shard); use dp/sharding, or variant none/rslora")
        hidden = _model_dim(m, "hidden_size")
        require(p.variant != "pissa" or hidden is None or p.lora_r <= hidden, "stage.peft.lora_r", p.lora_r,
                f"PiSSA takes the top lora_r singular vectors: must be <= the hidden size ({hidden})")
    else:
        require(p.variant == "none", "stage.peft.variant", p.variant, "is a LoRA variant: needs stage.peft.method=lora")
        require(p.lora_plus_ratio == 1.0, "stage.peft.lora_plus_ratio", p.lora_plus_ratio,
                "is LoRA+: needs stage.peft.method=lora")
    if p.method == "prefix":
        require(fam.prefix_cache is not None, "stage.peft.method", "prefix",
                f"prefix tuning is not supported for model family {m.family}: {fam.no_prefix}")
        positive("stage.peft.num_prefix_tokens", p.num_prefix_tokens)
        require(par.pp == 1, "stage.peft.method", p.method,
                "prefix tuning does not run under pipeline parallelism (PaddleNLP: not implemented); use lora, or dp/tp")
        # PaddleNLP's prefix model cuts the prefix cache for tensor-parallel ranks by contiguous width (the
        # layers-x-k/v axis), not by attention heads, and each rank learns only its cut of a replicated prefix:
        # another model than one process's.
        require(par.tp == 1, "stage.peft.method", p.method,
                "prefix tuning does not split over tensor-parallel ranks in PaddleNLP 3.0.0b4 (its cut of the prefix "
                "cache is not per attention head); use lora, or dp/sharding")
    if p.method == "lokr":
        positive("stage.peft.lokr_dim", p.lokr_dim)
        require(p.lokr_alpha >= 0, "stage.peft.lokr_alpha", p.lokr_alpha, "must be >= 0 (0 = lokr_dim, scale 1)")
        require(p.lokr_factor == -1 or p.lokr_factor >= 1, "stage.peft.lokr_factor", p.lokr_factor,
                "must be >= 1, or -1 for the most square split")
    if p.method == "vera":
        positive("stage.peft.vera_r", p.vera_r)
        hidden = _model_dim(m, "hidden_size")
        require(hidden is None or p.vera_r <= hidden, "stage.peft.vera_r", p.vera_r,
                f"VeRA's pair is the top vera_r singular vectors: must be <= the hidden size ({hidden})")
    if p.method == "reft":
        require(fam.architecture == "LlamaForCausalLM", "stage.peft.method", "reft",
                f"PaddleNLP's ReFT hooks LLaMA's decoder layers only; model family {m.family} is not LLaMA")
        positive("stage.peft.reft_rank", p.reft_rank)
        require(0 <= p.reft_dropout < 1, "stage.peft.reft_dropout", p.reft_dropout, "must be in [0, 1)")
        require(reft_positions(p.reft_positions) is not None, "stage.peft.reft_positions", p.reft_positions,
                "allowed: f<n> (first n prompt tokens), l<n> (last n) or f<n>+l<n>, n >= 1")
        layers = _model_dim(m, "num_hidden_layers")
        for layer in p.reft_layers or []:
            require(layers is None or 0 <= layer < layers, "stage.peft.reft_layers", list(p.reft_layers),
                    f"the model's layers are 0..{(layers or 1) - 1}")
    if p.method in ("lokr", "vera", "reft"):
        # PaddleNLP 3.0.0b4's LoKrModel and VeRAModel raise NotImplementedError for tensor- and pipeline-parallel
        # models; its ReFT hooks the single model's decoder layers.
        require(par.tp == 1 and par.pp == 1, "stage.peft.method", p.method,
                f"{p.method} does not run under tensor or pipeline parallelism (PaddleNLP: not implemented); "
                "use dp/sharding, or lora")


def _model_dim(m: DictConfig, name: str) -> Optional[int]:
    """A hyperparameter of the model as given (size or config.json, with overrides), or the class default."""
    if not (m.size in m.sizes or m.name_or_path):
        return None
    return model_family(m).hyperparameters(model_hparams(m)).get(name)


def reft_positions(spec: str) -> Optional[tuple]:
    """'f7+l7' -> (7, 7); 'f3' -> (3, 0); 'l2' -> (0, 2); None when malformed."""
    import re

    match = re.fullmatch(r"f(\d+)\+l(\d+)|f(\d+)|l(\d+)", spec or "")
    if not match:
        return None
    both_first, both_last, first, last = (int(g) if g else 0 for g in match.groups())
    first, last = first or both_first, last or both_last
    return (first, last) if (first >= 1 or last >= 1) and (not match.group(1) or (first >= 1 and last >= 1)) else None
