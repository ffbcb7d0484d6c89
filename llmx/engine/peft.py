"""Adapters: wrapping a model for training (cfg.stage.peft), and loading a saved adapter
back onto its base, merged into the base's weights or kept as an adapter.

PaddleNLP's peft does the work; llmx adds what makes runs comparable across layouts
(layout-independent LoRA init) and one place that knows each method's loader.
"""
from __future__ import annotations

import logging
import math
import zlib
from typing import Optional

import numpy as np
import paddle
from omegaconf import DictConfig

from llmx.engine.distributed import hybrid_group
from llmx.errors import ConfigError
from llmx.families import family
from llmx.sources import ModelSource

log = logging.getLogger(__name__)


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


def load_adapter(model, fam, source: ModelSource, merge: bool):
    """`model` (the adapter's base, loaded) with `source`'s adapter on it: merged into the base's
    weights and unwrapped when `merge` (a plain model that computes base + adapter), else wrapped."""
    method, path = source.adapter, source.adapter_dir
    if merge and not source.mergeable:
        raise ConfigError(f"model.name_or_path: {source.run_dir or path} holds a {method} adapter, which cannot be "
                          "merged into its base; this stage needs a full model")
    if method == "lora":
        from paddlenlp.peft import LoRAModel

        wrapped = LoRAModel.from_pretrained(model, path)
    elif method == "prefix":
        from paddlenlp.peft import PrefixModelForCausalLM

        from llmx.engine.prefix_hooks import prefix_hooks

        pad_mask, postprocess = prefix_hooks(fam)
        wrapped = PrefixModelForCausalLM.from_pretrained(model, path, postprocess_past_key_value=postprocess,
                                                         pad_attention_mask=pad_mask)
    else:
        raise ConfigError(f"model.name_or_path: loading {method} adapters is not supported ({path})")
    wrapped.eval()
    log.info("loaded the %s adapter %s onto %s%s", method, path, source.model_dir, " (merged)" if merge else "")
    if not merge:
        return wrapped
    wrapped.merge()
    return wrapped.restore_original_model()

