"""Model and tokenizer building from `cfg.model`, PEFT wrapping, and export.

A family file names PaddleNLP classes; with `name_or_path` we load pretrained
weights from a local directory, otherwise we build the family's config at
`size` and initialise it randomly (seeded), using the bundled tokenizer.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import paddle
import paddlenlp.transformers as pnt
from omegaconf import DictConfig, OmegaConf

from llmx.config import ConfigError, asset_path
from llmx.data.sft import IGNORE_INDEX
from llmx.engine import family_fixes
from llmx.experiment import atomic_dir

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


def build_model(m: DictConfig, tokenizer, seed: int):
    family_fixes.before_build(m.family)
    model_cls = _paddlenlp_class("model.architecture", m.architecture)
    config = family_config(m, tokenizer)
    if m.name_or_path:
        return model_cls.from_pretrained(m.name_or_path, config=config, dtype=m.dtype)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConfigError(f"model.sizes.{m.size}.vocab_size={config.vocab_size}: smaller than the tokenizer ({len(tokenizer)} tokens)")
    paddle.seed(seed)  # random init is part of the experiment: same seed, same weights
    model = model_cls.from_config(config, dtype=m.dtype)
    family_fixes.after_random_init(m.family, model)
    log.info("random init of %s (%s) with %d parameters", m.architecture, m.size, count_parameters(model))
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


def save_pretrained(model, tokenizer, out_dir: Path, **kwargs) -> Path:
    """Write weights + config + tokenizer files (via a temporary directory), loadable by
    from_pretrained. Full models are written as safetensors; adapters in PaddleNLP's
    peft format, which is what its LoRAModel/PrefixModel loaders read."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), **kwargs)
        tokenizer.save_pretrained(str(tmp))
    return out_dir
