"""Model and tokenizer building from `cfg.model` and the family table, and PEFT wrapping.

The family (llmx.families) names the PaddleNLP classes; with `name_or_path` we load
pretrained weights from a local directory, otherwise we build the family's config at
`size` and initialise it randomly (seeded), using the bundled tokenizer. Under tensor or
pipeline parallelism (read from the running fleet groups) each rank builds its part.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Optional

import paddle
import paddlenlp.transformers as pnt
from omegaconf import DictConfig, OmegaConf

from llmx.errors import ConfigError
from llmx.schema import asset_path
from llmx.convert.tokenizer import chat_template_in
from llmx.engine.distributed import hybrid_group
from llmx.engine.peft import count_parameters, load_adapter
from llmx.engine.rope import scale_rotary_layers
from llmx.families import Family, family, fixes
from llmx.ops import patch as ops_patch
from llmx.sources import ModelSource, resolve
from llmx.tokens import IGNORE_INDEX

log = logging.getLogger(__name__)
TINY_TOKENIZER = "tiny_tokenizer"


def model_source(m: DictConfig) -> Optional[ModelSource]:
    """What `model.name_or_path` points at (a model, adapter or run directory); None = random init."""
    return resolve(m.name_or_path) if m.name_or_path else None


def tokenizer_path(m: DictConfig) -> str:
    if m.tokenizer:
        return m.tokenizer
    return model_source(m).tokenizer if m.name_or_path else asset_path(TINY_TOKENIZER)


def build_tokenizer(m: DictConfig):
    path = tokenizer_path(m)
    tok = pnt.AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:  # many causal LMs ship without one; eos is the usual stand-in
        tok.pad_token = tok.eos_token
    # The template's source, which llmx.data.chat renders as transformers does (PaddleNLP keeps only a
    # compiled template, and its own encoder is wrong for templates that are not turn-local).
    tok.llmx_chat_template = chat_template_in(path)
    fam = family(m.family)
    tok.llmx_encoding = fam.encoding  # llmx.data.encoders.sft_encoder and the collators read it
    add_missing_tokens(tok, fam.special_tokens)
    return tok


def add_missing_tokens(tok, tokens) -> None:
    """Add the family's special tokens (attribute -> token) that `tok` lacks, in order (so their ids are fixed):
    the bundled tiny tokenizer has no [gMASK] or <sop> for ChatGLM v1."""
    missing = {k: t for k, t in tokens.items() if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)}
    if not missing:
        return
    tok.add_tokens(list(missing.values()), special_tokens=True)
    for attribute, token in missing.items():
        if attribute in tok.SPECIAL_TOKENS_ATTRIBUTES:
            setattr(tok, attribute, token)


def family_config(m: DictConfig, tokenizer=None):
    """The PaddleNLP config of `m` at its size, without building weights."""
    config_cls = family(m.family).load_class("config_class")
    overrides = OmegaConf.to_container(m.overrides)
    if m.name_or_path:
        config = config_cls.from_pretrained(model_source(m).model_dir)
        for k, v in overrides.items():
            setattr(config, k, v)
    else:
        config = config_cls(**{**OmegaConf.to_container(m.sizes[m.size]), **overrides})
        if tokenizer is not None:
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if getattr(tokenizer, name, None) is not None:
                    setattr(config, name, getattr(tokenizer, name))
            for attribute, token in family(m.family).special_tokens.items():  # ChatGLM v1's mask/gmask ids
                if hasattr(config, attribute + "_id"):
                    setattr(config, attribute + "_id", tokenizer.convert_tokens_to_ids(token))
    if m.get("rope_scaling"):  # over the checkpoint's own (llmx.rope; validated with the model group)
        config.rope_scaling = OmegaConf.to_container(m.rope_scaling)
    config.dtype = m.dtype
    # Our batches mark unlearned positions with IGNORE_INDEX; some criterions (GPT's) read
    # their ignore index from the config and default to 0, a real token id.
    config.ignore_index = IGNORE_INDEX
    return config


def build_model(m: DictConfig, tokenizer, seed: int, parallel: Optional[DictConfig] = None, load_weights: bool = True,
                keep_adapter: bool = False):
    """The model of `m`; under tensor/pipeline parallelism this rank's part of it: TP-split
    layers, and for pp > 1 the family's pipeline class. With load_weights=False a
    `name_or_path` model is built from its config with fresh random weights (pretraining).
    When `name_or_path` is an adapter (or a run that saved one) it is loaded onto its base and
    merged into it, or with keep_adapter (one process only) returned as the peft model."""
    fam = family(m.family)
    fixes.apply(fam.fixes, fixes.BEFORE_BUILD)
    model_cls = fam.load_class()
    config = family_config(m, tokenizer)
    hcg = hybrid_group()
    tp, pp = (hcg.get_model_parallel_world_size(), hcg.get_pipe_parallel_world_size()) if hcg else (1, 1)
    if tp > 1 or pp > 1:
        model = _build_parallel_model(m, fam, model_cls, config, tokenizer, seed, hcg, parallel, load_weights)
        scale_rotary_layers(model, fam, config)
        if m.fused_ops == "on":  # the split and pipeline layers are other classes: not matched (auto: silently)
            log.info("model.fused_ops=on: not applied under tensor/pipeline parallelism")
        ops_patch.enable(model, "off")
        return model
    if m.name_or_path and load_weights:
        model = _pretrained(m, fam, model_cls, config, merge=not keep_adapter)
    else:
        model = _random_init(m, fam, model_cls, config, tokenizer, seed)
    scale_rotary_layers(model, fam, config)
    ops_patch.enable(model, m.fused_ops)  # llmx.ops' kernels into the layers that match (model.fused_ops)
    return model


def _pretrained(m: DictConfig, fam: Family, model_cls, config, merge: bool = True):
    source = model_source(m)
    if (Path(source.model_dir) / "quant_config.json").is_file():  # llmx.quant's checkpoint: dequantized per layer
        from llmx.quant.checkpoint import load_quantized

        return load_quantized(model_cls, config, source.model_dir, m.dtype)
    model = model_cls.from_pretrained(source.model_dir, config=config, dtype=m.dtype)
    return load_adapter(model, fam, source, merge) if source.adapter else model


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
    A base with an adapter is merged in one process and split the same way.
    (A huge random-init model is thus built once in host memory per rank.)"""
    tp, pp = hcg.get_model_parallel_world_size(), hcg.get_pipe_parallel_world_size()
    part_config = copy.deepcopy(config)
    part_config.tensor_parallel_degree = tp
    part_config.tensor_parallel_rank = hcg.get_model_parallel_rank()
    part_config.tensor_parallel_output = True  # logits stay split: the loss is the vocab-parallel one
    part_config.sequence_parallel = bool(parallel is not None and parallel.sequence_parallel)
    part_config.virtual_pp_degree = parallel.vpp if parallel is not None else 1
    part_cls = fam.load_class("pipeline_class") if pp > 1 else model_cls
    pretrained = model_source(m) if m.name_or_path and load_weights else None
    if pretrained and not pretrained.adapter:
        model = part_cls.from_pretrained(pretrained.model_dir, config=part_config, dtype=m.dtype)
        source = pretrained.model_dir
    else:  # a random init, or a base with its adapter merged in one process, split like a random init
        if pretrained:
            full, source = _pretrained(m, fam, model_cls, config), f"{pretrained.model_dir} + {pretrained.adapter_dir}"
        else:
            full, source = _random_init(m, fam, model_cls, config, tokenizer, seed), f"the seed-{seed} random init"
        state = {k: v.numpy() for k, v in full.state_dict().items()}
        del full
        if tp > 1:  # (some families' split actions take paddle tensors, the rest numpy arrays or either)
            state = model_cls.convert_tensor_parallel(None, part_config, state_dict={k: paddle.to_tensor(v) for k, v in state.items()})
        model = part_cls.from_config(part_config, dtype=m.dtype)
        _load_part(model, state, model_cls.base_model_prefix)
    if pp > 1:
        from llmx.compat.paddle import count_shared_weights_once
        from llmx.compat.paddlenlp import bool_pipeline_attention_masks

        bool_pipeline_attention_masks(model)  # our 0/1 int64 masks would be read as position ids
        count_shared_weights_once(model)  # a tied embedding and head: once in the gradient norm
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


def run_facts() -> dict:
    """What a run's summary records about the models it built: the fused kernels that ran (llmx.ops)."""
    from llmx import ops

    return {"fused_ops": ops.used()} if ops.mode() in ("auto", "on") else {}
