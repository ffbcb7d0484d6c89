"""Model and tokenizer building from `cfg.model`, PEFT wrapping, and export.

A family file names PaddleNLP classes; with `name_or_path` we load pretrained
weights from a local directory, otherwise we build the family's config at
`size` and initialise it randomly (seeded), using the bundled tokenizer.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import paddle
import paddlenlp.transformers as pnt
from omegaconf import DictConfig, OmegaConf

from llmx.config import ConfigError, asset_path
from llmx.data.sft import IGNORE_INDEX
from llmx.engine import family_fixes
from llmx.experiment import atomic_dir, replace_dir

log = logging.getLogger(__name__)
TINY_TOKENIZER = "tiny_tokenizer"


def _paddlenlp_class(key: str, name: str):
    cls = getattr(pnt, name, None)
    if cls is None:
        raise ConfigError(f"{key}={name!r}: not a class in paddlenlp.transformers")
    return cls


def tokenizer_path(m: DictConfig) -> str:
    return m.tokenizer or m.name_or_path or asset_path(TINY_TOKENIZER)


def build_tokenizer(m: DictConfig):
    tok = pnt.AutoTokenizer.from_pretrained(tokenizer_path(m))
    if tok.pad_token_id is None:  # many causal LMs ship without one; eos is the usual stand-in
        tok.pad_token = tok.eos_token
    return tok


def family_config(m: DictConfig, tokenizer=None):
    """The PaddleNLP config of `m` at its size, without building weights."""
    config_cls = _paddlenlp_class("model.config_class", m.config_class)
    if m.name_or_path:
        config = config_cls.from_pretrained(m.name_or_path)
        for k, v in OmegaConf.to_container(m.overrides).items():
            setattr(config, k, v)
    else:
        kwargs = {**OmegaConf.to_container(m.sizes[m.size]), **OmegaConf.to_container(m.overrides)}
        config = config_cls(**kwargs)
        if tokenizer is not None:
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if getattr(tokenizer, name, None) is not None:
                    setattr(config, name, getattr(tokenizer, name))
    config.dtype = m.dtype
    # Our datasets mark unlearned positions with IGNORE_INDEX; some criterions (GPT's)
    # read their ignore index from the config and default to 0, a real token id.
    config.ignore_index = IGNORE_INDEX
    return config


def build_model(m: DictConfig, tokenizer, seed: int, parallel: Optional[DictConfig] = None, load_weights: bool = True):
    """The model of `m`; under tensor/pipeline parallelism (read from the running fleet
    groups) this rank's part of it: TP-split layers, and for pp > 1 the family's
    pipeline class (`m.pipeline_class`). With load_weights=False a `name_or_path` model
    is built from its config with fresh random weights (pretraining from scratch)."""
    family_fixes.before_build(m.family)
    model_cls = _paddlenlp_class("model.architecture", m.architecture)
    config = family_config(m, tokenizer)
    tp, pp = hybrid_degrees()
    if tp > 1 or pp > 1:
        return _build_parallel_model(m, model_cls, config, tokenizer, seed, tp, pp, parallel, load_weights)
    if m.name_or_path and load_weights:
        return model_cls.from_pretrained(m.name_or_path, config=config, dtype=m.dtype)
    return _random_init(m, model_cls, config, tokenizer, seed)


def _random_init(m: DictConfig, model_cls, config, tokenizer, seed: int):
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConfigError(f"model.sizes.{m.size}.vocab_size={config.vocab_size}: smaller than the tokenizer ({len(tokenizer)} tokens)")
    paddle.seed(seed)  # random init is part of the experiment: same seed, same weights
    model = model_cls.from_config(config, dtype=m.dtype)
    family_fixes.after_random_init(m.family, model)
    log.info("random init of %s (%s) with %d parameters", m.architecture, m.size, count_parameters(model))
    return model


def hybrid_degrees() -> tuple[int, int]:
    """(tp, pp) of the running fleet hybrid groups; (1, 1) in a single process or plain DP."""
    from paddle.distributed import fleet

    hcg = None
    if paddle.distributed.get_world_size() > 1:
        try:
            hcg = fleet.get_hybrid_communicate_group()
        except AttributeError:  # plain paddle.distributed.init_parallel_env: data parallel only
            hcg = None
    if hcg is None:
        return 1, 1
    return hcg.get_model_parallel_world_size(), hcg.get_pipe_parallel_world_size()


def _build_parallel_model(m: DictConfig, model_cls, config, tokenizer, seed: int, tp: int, pp: int, parallel,
                          load_weights: bool = True):
    """This rank's part of the model. Pretrained weights are split by PaddleNLP's loader; a
    random init is made as the full single-process model (same seed, so the same weights as
    `parallel=single`) and then split: that is what makes layouts comparable number for number.
    (A huge random-init model is thus built once in host memory per rank.)"""
    from paddle.distributed import fleet

    hcg = fleet.get_hybrid_communicate_group()
    part_config = copy.deepcopy(config)
    part_config.tensor_parallel_degree = tp
    part_config.tensor_parallel_rank = hcg.get_model_parallel_rank()
    part_config.tensor_parallel_output = True  # logits stay split: the loss is the vocab-parallel one
    part_config.sequence_parallel = bool(parallel is not None and parallel.sequence_parallel)
    part_config.virtual_pp_degree = parallel.vpp if parallel is not None else 1
    part_cls = _paddlenlp_class("model.pipeline_class", m.pipeline_class) if pp > 1 else model_cls
    if m.name_or_path and load_weights:
        model = part_cls.from_pretrained(m.name_or_path, config=part_config, dtype=m.dtype)
        source = m.name_or_path
    else:
        full = _random_init(m, model_cls, config, tokenizer, seed)
        state = {k: v.numpy() for k, v in full.state_dict().items()}
        del full
        if tp > 1:
            state = model_cls.convert_tensor_parallel(None, part_config, state_dict=state)
        model = part_cls.from_config(part_config, dtype=m.dtype)
        missing, _ = model.set_state_dict({k: v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v)
                                           for k, v in state.items()})
        if missing:
            raise RuntimeError(f"{part_cls.__name__}: no weights split for {missing}")
        source = f"the seed-{seed} random init"
    if pp > 1:
        _bool_attention_masks(model)
    log.info("%s part (tp rank %d of %d, pp stage %d of %d): %d parameters, split from %s", part_cls.__name__,
             part_config.tensor_parallel_rank, tp, hcg.get_stage_id(), pp, count_parameters(model), source)
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(int(p.numel()) for p in model.parameters() if not (trainable_only and p.stop_gradient))


def wrap_peft(model, cfg: DictConfig, base_ref: Optional[str]):
    """Wrap `model` with the adapter named by cfg.stage.peft; freeze everything else."""
    p, m = cfg.stage.peft, cfg.model
    if p.method == "lora":
        from paddlenlp.peft import LoRAConfig, LoRAModel

        targets = list(p.target_modules if p.target_modules is not None else m.lora_target_modules)
        lora_cfg = LoRAConfig(target_modules=targets, r=p.lora_r, lora_alpha=p.lora_alpha,
                              lora_dropout=p.lora_dropout, dtype=m.dtype, base_model_name_or_path=base_ref)
        model = LoRAModel(model, lora_cfg)
        model.mark_only_lora_as_trainable()
    elif p.method == "prefix":
        from paddlenlp.peft import PrefixConfig, PrefixModelForCausalLM

        from llmx.engine.prefix_hooks import prefix_dims, prefix_hooks

        pad_mask, postprocess = prefix_hooks(m.family)
        prefix_cfg = PrefixConfig(num_prefix_tokens=p.num_prefix_tokens, dtype=m.dtype,
                                  **prefix_dims(m.family, model.config))
        model = PrefixModelForCausalLM(model, prefix_cfg, postprocess_past_key_value=postprocess,
                                       pad_attention_mask=pad_mask)
        model.mark_only_prefix_as_trainable()
    if p.method != "none":
        log.info("%s: %d of %d parameters trainable", p.method, count_parameters(model, True), count_parameters(model))
    return model


def _bool_attention_masks(model) -> None:
    """PaddleNLP's Llama pipeline stages take an int64 `attention_mask` on GPU for position
    ids (and int32 for FlashMask row indices); our padded batches carry a 0/1 int64 mask.
    Hand the pipeline a bool mask, which every device reads as a mask."""
    prepare = getattr(model, "_prepare_pipeline_inputs_func", None)
    if prepare is None:  # the Trainer's default split (input_ids, attention_mask, position_ids | labels)
        return

    def prepare_inputs(inputs):
        batches = [inputs] if isinstance(inputs, dict) else inputs
        for batch in batches:
            mask = batch.get("attention_mask")
            if mask is not None and mask.dtype in (paddle.int64, paddle.int32):
                batch["attention_mask"] = mask.astype("bool")
        return prepare(inputs)

    model._prepare_pipeline_inputs_func = prepare_inputs


def model_parallel(parallel: DictConfig) -> bool:
    """Does each rank hold only a part of the model (tensor or pipeline parallel)?"""
    return parallel.tp > 1 or parallel.pp > 1


def export_merged(trainer, out_dir: Path, is_main: bool) -> Path:
    """Write the whole model of a tensor/pipeline-parallel run as one from_pretrained-able
    directory. Every rank must call this: PaddleNLP's unified checkpoint gathers the tp
    shards and writes each pipeline stage's layers under their single-model names."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    paddle.distributed.barrier()
    trainer.save_model(str(tmp))
    paddle.distributed.barrier()
    if is_main:
        name_single_model_class(tmp)
        replace_dir(tmp, out_dir)
    return out_dir


def export_full_model(parallel: DictConfig, trainer, model, tokenizer, out_dir: Path, is_main: bool) -> str:
    """The trained full model as one from_pretrained-able directory: merged from every
    rank's part under tensor/pipeline parallelism (all ranks must call), else written by rank 0."""
    if model_parallel(parallel):
        return str(export_merged(trainer, out_dir, is_main))
    if is_main:
        save_pretrained(model, tokenizer, out_dir, safe_serialization=True)
    return str(out_dir)


def name_single_model_class(model_dir: Path) -> None:
    """A pipeline run saves the single-model weight names but records its pipeline class
    (e.g. LlamaForCausalLMPipe) in config.json; name the class that loads them."""
    config = Path(model_dir) / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        names = data.get("architectures") or []
        if any(n.endswith("Pipe") for n in names):
            data["architectures"] = [n[: -len("Pipe")] if n.endswith("Pipe") else n for n in names]
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_pretrained(model, tokenizer, out_dir: Path, **kwargs) -> Path:
    """Write weights + config + tokenizer files (via a temporary directory), loadable by
    from_pretrained. Full models are written as safetensors; adapters in PaddleNLP's
    peft format, which is what its LoRAModel/PrefixModel loaders read."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), **kwargs)
        tokenizer.save_pretrained(str(tmp))
    return out_dir
