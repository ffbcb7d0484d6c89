"""Model and tokenizer building from `cfg.model` and the family table, and PEFT wrapping.

The family (llmx.families) names the PaddleNLP classes; with `name_or_path` we load
pretrained weights from a local directory, otherwise we build the family's config at
`size` and initialise it randomly (seeded), using the bundled tokenizer. Under tensor or
pipeline parallelism (read from the running fleet groups) each rank builds its part.
"""
from __future__ import annotations

import copy
import logging
import math
import zlib
from typing import Optional

import numpy as np

import paddle
import paddlenlp.transformers as pnt
from omegaconf import DictConfig, OmegaConf

from llmx.config import ConfigError, asset_path
from llmx.engine.distributed import hybrid_group
from llmx.families import Family, family, fixes
from llmx.tokens import IGNORE_INDEX

log = logging.getLogger(__name__)
TINY_TOKENIZER = "tiny_tokenizer"


def _paddlenlp_class(name: str):
    cls = getattr(pnt, name, None)
    if cls is None:  # the family table names a class this paddlenlp lacks
        raise ConfigError(f"paddlenlp.transformers has no class {name!r} (llmx.families expects paddlenlp==3.0.0b4)")
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
    config_cls = _paddlenlp_class(family(m.family).config_class)
    overrides = OmegaConf.to_container(m.overrides)
    if m.name_or_path:
        config = config_cls.from_pretrained(m.name_or_path)
        for k, v in overrides.items():
            setattr(config, k, v)
    else:
        config = config_cls(**{**OmegaConf.to_container(m.sizes[m.size]), **overrides})
        if tokenizer is not None:
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if getattr(tokenizer, name, None) is not None:
                    setattr(config, name, getattr(tokenizer, name))
    config.dtype = m.dtype
    # Our batches mark unlearned positions with IGNORE_INDEX; some criterions (GPT's) read
    # their ignore index from the config and default to 0, a real token id.
    config.ignore_index = IGNORE_INDEX
    return config


def build_model(m: DictConfig, tokenizer, seed: int, parallel: Optional[DictConfig] = None, load_weights: bool = True):
    """The model of `m`; under tensor/pipeline parallelism this rank's part of it: TP-split
    layers, and for pp > 1 the family's pipeline class. With load_weights=False a
    `name_or_path` model is built from its config with fresh random weights (pretraining)."""
    fam = family(m.family)
    fixes.apply(fam.fixes, fixes.BEFORE_BUILD)
    model_cls = _paddlenlp_class(fam.architecture)
    config = family_config(m, tokenizer)
    hcg = hybrid_group()
    tp, pp = (hcg.get_model_parallel_world_size(), hcg.get_pipe_parallel_world_size()) if hcg else (1, 1)
    if tp > 1 or pp > 1:
        return _build_parallel_model(m, fam, model_cls, config, tokenizer, seed, hcg, parallel, load_weights)
    if m.name_or_path and load_weights:
        return model_cls.from_pretrained(m.name_or_path, config=config, dtype=m.dtype)
    return _random_init(m, fam, model_cls, config, tokenizer, seed)


def _random_init(m: DictConfig, fam: Family, model_cls, config, tokenizer, seed: int):
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConfigError(f"model.sizes.{m.size}.vocab_size={config.vocab_size}: smaller than the tokenizer ({len(tokenizer)} tokens)")
    paddle.seed(seed)  # random init is part of the experiment: same seed, same weights
    model = model_cls.from_config(config, dtype=m.dtype)
    fixes.apply(fam.fixes, fixes.AFTER_RANDOM_INIT, model)
    log.info("random init of %s (%s) with %d parameters", fam.architecture, m.size, count_parameters(model))
    return model


def _build_parallel_model(m: DictConfig, fam: Family, model_cls, config, tokenizer, seed: int, hcg, parallel,
                          load_weights: bool = True):
    """This rank's part of the model. Pretrained weights are split by PaddleNLP's loader; a
    random init is made as the full single-process model (same seed, so the same weights as
    `parallel=single`) and then split: that is what makes layouts comparable number for number.
    (A huge random-init model is thus built once in host memory per rank.)"""
    tp, pp = hcg.get_model_parallel_world_size(), hcg.get_pipe_parallel_world_size()
    part_config = copy.deepcopy(config)
    part_config.tensor_parallel_degree = tp
    part_config.tensor_parallel_rank = hcg.get_model_parallel_rank()
    part_config.tensor_parallel_output = True  # logits stay split: the loss is the vocab-parallel one
    part_config.sequence_parallel = bool(parallel is not None and parallel.sequence_parallel)
    part_config.virtual_pp_degree = parallel.vpp if parallel is not None else 1
    part_cls = _paddlenlp_class(fam.pipeline_class) if pp > 1 else model_cls
    if m.name_or_path and load_weights:
        model = part_cls.from_pretrained(m.name_or_path, config=part_config, dtype=m.dtype)
        source = m.name_or_path
    else:
        full = _random_init(m, fam, model_cls, config, tokenizer, seed)
        state = {k: v.numpy() for k, v in full.state_dict().items()}
        del full
        if tp > 1:  # (some families' split actions take paddle tensors, the rest numpy arrays or either)
            state = model_cls.convert_tensor_parallel(None, part_config, state_dict={k: paddle.to_tensor(v) for k, v in state.items()})
        model = part_cls.from_config(part_config, dtype=m.dtype)
        _load_part(model, state, model_cls.base_model_prefix)
        source = f"the seed-{seed} random init"
    if pp > 1:
        _bool_attention_masks(model)
    log.info("%s part (tp rank %d of %d, pp stage %d of %d): %d parameters, split from %s", part_cls.__name__,
             part_config.tensor_parallel_rank, tp, hcg.get_stage_id(), pp, count_parameters(model), source)
    return model


def _load_part(model, state: dict, prefix: str) -> None:
    """Load a full model's (tensor-parallel split) weights into this rank's part. Some pipeline classes
    (ChatGLMv2's) name their layers without the single model's base prefix: such names are matched
    with the prefix dropped, and the prefix is remembered (`llmx_name_prefix`) for exports to restore."""
    own = set(model.state_dict().keys())  # a pipeline part lists its single-model names
    model.llmx_name_prefix = ""
    for name in list(state):
        short = name[len(prefix) + 1:] if name.startswith(prefix + ".") else None
        if name not in own and short in own:
            state[short] = state.pop(name)
            model.llmx_name_prefix = prefix + "."
    missing, _ = model.set_state_dict({k: v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v) for k, v in state.items()})
    # A tied lm_head is the embedding's own parameter under a second name: loaded with it.
    loaded = {id(t) for name, t in model.state_dict().items() if name not in missing}
    missing = [name for name in missing if id(model.state_dict()[name]) not in loaded]
    if missing:
        raise RuntimeError(f"{type(model).__name__}: no weights split for {missing}")


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(int(p.numel()) for p in model.parameters() if not (trainable_only and p.stop_gradient))


def wrap_peft(model, cfg: DictConfig, base_ref: Optional[str]):
    """Wrap `model` with the adapter named by cfg.stage.peft; freeze everything else."""
    p, m = cfg.stage.peft, cfg.model
    fam = family(m.family)
    if p.method == "lora":
        from paddlenlp.peft import LoRAConfig, LoRAModel

        targets = list(p.target_modules if p.target_modules is not None else fam.lora_targets)
        lora_cfg = LoRAConfig(target_modules=targets, r=p.lora_r, lora_alpha=p.lora_alpha,
                              lora_dropout=p.lora_dropout, dtype=m.dtype, base_model_name_or_path=base_ref)
        model = LoRAModel(model, lora_cfg)
        model.mark_only_lora_as_trainable()
        init_lora_independent_of_layout(model, cfg.seed)
    elif p.method == "prefix":
        from paddlenlp.peft import PrefixConfig, PrefixModelForCausalLM

        from llmx.engine.prefix_hooks import prefix_dims, prefix_hooks

        pad_mask, postprocess = prefix_hooks(fam)
        prefix_cfg = PrefixConfig(num_prefix_tokens=p.num_prefix_tokens, dtype=m.dtype,
                                  **prefix_dims(fam, model.config))
        model = PrefixModelForCausalLM(model, prefix_cfg, postprocess_past_key_value=postprocess,
                                       pad_attention_mask=pad_mask)
        model.mark_only_prefix_as_trainable()
    if p.method != "none":
        log.info("%s: %d of %d parameters trainable", p.method, count_parameters(model, True), count_parameters(model))
    return model


def init_lora_independent_of_layout(model, seed: int) -> None:
    """Give every LoRA A the values it has in one process, whatever the layout: drawn per parameter from
    (seed, its single-model name) at its full shape, then cut to this rank's tensor-parallel shard.
    PaddleNLP draws them per rank from the running RNG, so a tensor- or pipeline-parallel run would start
    from other adapters than one process and could not be compared with it. The distribution is
    PaddleNLP's (Kaiming uniform with a=sqrt(5): U(+-1/sqrt(fan_in))); B stays zero."""
    hcg = hybrid_group()
    tp = hcg.get_model_parallel_world_size() if hcg else 1
    actions = model._get_tensor_parallel_mappings(model.model.config, is_split=True) if tp > 1 else {}
    for name, param in model.get_trainable_state_dict().items():
        if not name.endswith("lora_A"):
            continue
        shape, action = list(param.shape), actions.get(name)
        if action is not None:  # a row-parallel layer's A is split over its input rows
            shape[-1 if action.keywords["is_column"] else 0] *= tp
        rng = np.random.RandomState(zlib.crc32(f"{seed}:{name}".encode()))
        bound = 1.0 / math.sqrt(shape[0])
        full = rng.uniform(-bound, bound, size=shape).astype("float32")
        param.set_value(paddle.to_tensor(action(full) if action is not None else full).astype(param.dtype))


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
