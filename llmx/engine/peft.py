"""Adapters: wrapping a model for training (cfg.stage.peft), and loading a saved adapter
back onto its base, merged into the base's weights or kept as an adapter.

PaddleNLP's peft does the work; llmx adds what makes runs comparable across layouts
(layout-independent LoRA init) and one place that knows each method's loader.
"""
from __future__ import annotations

import contextlib
import logging
import math
import zlib
from typing import Optional

import numpy as np
import paddle
from omegaconf import DictConfig

from llmx.compat.paddlenlp import merge_adapter_layer
from llmx.engine.distributed import hybrid_group
from llmx.errors import ConfigError
from llmx.families import family
from llmx.sources import ModelSource

log = logging.getLogger(__name__)


# PaddleNLP adapter wrappers whose forward is the base model's own (their layers carry the adapter);
# the wrapped causal LM is their `.model`.
SAME_FORWARD_WRAPPERS = ("LoRAModel", "VeRAModel", "LoKrModel")


def count_parameters(model, trainable_only: bool = False) -> int:
    # Read from every sublayer's own parameters: PaddleNLP's ReFTModel overrides named_parameters (and so
    # parameters()) to list only its trainable ones.
    params = {id(p): p for layer in model.sublayers(include_self=True) for p in layer._parameters.values() if p is not None}
    return sum(int(p.numel()) for p in params.values() if not (trainable_only and p.stop_gradient))


def wrap_peft(model, cfg: DictConfig, base_ref: Optional[str]):
    """Wrap `model` with the adapter named by cfg.stage.peft; freeze everything else."""
    p, m = cfg.stage.peft, cfg.model
    fam = family(m.family)
    targets = list(p.target_modules if p.target_modules is not None else fam.lora_targets)
    if p.method == "lora":
        from paddlenlp.peft import LoRAConfig, LoRAModel

        lora_cfg = LoRAConfig(target_modules=targets, r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                              dtype=m.dtype, base_model_name_or_path=base_ref, rslora=p.variant == "rslora",
                              pissa=p.variant == "pissa", use_mora=p.variant == "mora",
                              lora_use_mixer=p.variant == "moslora", lora_plus_scale=p.lora_plus_ratio)
        model = LoRAModel(model, lora_cfg)
        model.mark_only_lora_as_trainable()
        if p.variant == "pissa":
            _pissa_init_now(model)
        elif p.variant != "mora":  # MoRA's square matrix starts at zero
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
    elif p.method == "lokr":
        from paddlenlp.peft import LoKrConfig, LoKrModel

        # LoKrModel reads the base's config from base_model_name_or_path: it must be a saved model directory.
        model = LoKrModel(model, LoKrConfig(target_modules=targets, lokr_dim=p.lokr_dim, lokr_alpha=p.lokr_alpha,
                                            factor=p.lokr_factor, decompose_both=p.lokr_decompose_both,
                                            dtype=m.dtype, base_model_name_or_path=base_ref))
    elif p.method == "vera":
        from paddlenlp.peft import VeRAConfig, VeRAModel

        # With PaddleNLP's default init VeRA cannot learn (its B starts at zero and stays frozen, so b and d get
        # no gradient). Its PiSSA init (the top vera_r singular pair of each weight, the residual kept frozen)
        # starts from the base's outputs and trains b and d; it requires vera_alpha == r.
        model = VeRAModel(model, VeRAConfig(target_modules=targets, r=p.vera_r, vera_alpha=p.vera_r, pissa_init=True,
                                            dtype=m.dtype, base_model_name_or_path=base_ref))
        model.mark_only_vera_as_trainable()
    elif p.method == "reft":
        from llmx.engine.reft import wrap_reft

        model = wrap_reft(model, cfg)
    if p.method != "none":
        model.llmx_base_model = base_ref
        log.info("%s: %d of %d parameters trainable", p.method, count_parameters(model, True), count_parameters(model))
    return model


def _pissa_init_now(model) -> None:
    """PaddleNLP's PiSSA layers take the SVD of their weight at the first forward and overwrite lora_A/B
    then, which would also overwrite adapter weights loaded from a checkpoint before it. Do it now, and
    keep the initial pair (A0, B0): the saved adapter is expressed against the original base weights.
    (Found in paddlenlp 3.0.0b4; the early SVD can go when PiSSA initialises at construction.)"""
    for layer in _adapter_layers(model):
        layer.pissa_init(layer.r)
        layer.apply_pissa = True
        layer.llmx_pissa_start = (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())


def _adapter_layers(model):
    return [layer for layer in model.model.sublayers() if hasattr(layer, "merged")]


def uses_pissa(model) -> bool:
    return hasattr(model, "model") and any(hasattr(layer, "llmx_pissa_start") for layer in _adapter_layers(model))


def pissa_as_lora(model, state: dict, config) -> tuple:
    """A trained PiSSA adapter as a plain LoRA adapter over the ORIGINAL base: the base in memory is
    W - A0 B0, so the total change is A B - A0 B0 = [A, A0] @ [B; -B0] (rank 2r, scaling 1). PaddleNLP saves
    A, B with pissa=True, and its loader re-runs the SVD init over them: reloaded, they would be lost."""
    state = dict(state)
    for name, layer in model.model.named_sublayers():
        start = getattr(layer, "llmx_pissa_start", None)
        if start is None:
            continue
        a, b = state[f"{name}.lora_A"], state[f"{name}.lora_B"]
        state[f"{name}.lora_A"] = paddle.concat([paddle.to_tensor(a), start[0]], axis=1)
        state[f"{name}.lora_B"] = paddle.concat([paddle.to_tensor(b), -start[1]], axis=0)
    config.r, config.lora_alpha, config.pissa = 2 * config.r, 2 * config.r, False
    return state, config


def merged_model(model, layout_tp: int = 1):
    """A PEFT model's adapters folded into its weights; in one process a plain model (adapter layers
    replaced by the Linear they wrap), under tensor parallelism the wrapped model with merged weights."""
    for layer in _adapter_layers(model):
        merge_adapter_layer(layer)  # (not layer.merge(): broken for LoKr and MoRA upstream)
    if layout_tp > 1:
        return model.model
    return _restore_linears(model.model)


def _restore_linears(model):
    """Replace every merged adapter layer by a plain Linear sharing its weight and bias. (PaddleNLP
    3.0.0b4's restore_original_model raises for VeRA on any non-VeRA layer, and refuses tensor-parallel
    layers; can go when it handles every method.)"""
    import paddle.nn as nn

    for name, layer in list(model.named_sublayers()):
        if isinstance(layer, nn.Linear) and type(layer) is not nn.Linear and getattr(layer, "merged", False):
            parent = model
            *path, leaf = name.split(".")
            for part in path:
                parent = getattr(parent, part)
            plain = nn.Linear(layer.weight.shape[0], layer.weight.shape[1], bias_attr=layer.bias is not None and None)
            plain.weight = layer.weight
            if layer.bias is not None:
                plain.bias = layer.bias
            setattr(parent, leaf, plain)
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
        if not name.endswith(("lora_A", "lora_AB")):  # (lora_AB: MoSLoRA's r x r mixer)
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
    if method == "prefix":
        from paddlenlp.peft import PrefixModelForCausalLM

        from llmx.engine.prefix_hooks import prefix_hooks

        pad_mask, postprocess = prefix_hooks(fam)
        wrapped = PrefixModelForCausalLM.from_pretrained(model, path, postprocess_past_key_value=postprocess,
                                                         pad_attention_mask=pad_mask)
    elif method == "reft":
        from llmx.engine.reft import load_reft

        wrapped = load_reft(model, path)
    else:
        import paddlenlp.peft as peft

        loader = {"lora": peft.LoRAModel, "lokr": peft.LoKrModel, "vera": peft.VeRAModel}[method]
        wrapped = loader.from_pretrained(model, path)
    wrapped.eval()
    log.info("loaded the %s adapter %s onto %s%s", method, path, source.model_dir, " (merged)" if merge else "")
    return merged_model(wrapped) if merge else wrapped


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model under LoRA adapters (the reference of LoRA-DPO/KTO and of a LoRA PPO/GRPO actor):
    the flag trl's trainers flip, so the reference costs no second copy of the weights."""
    from paddlenlp.peft.lora.lora_model import AVAILABLE_LAYERS

    layers = [m for _, m in model.named_sublayers() if isinstance(m, tuple(AVAILABLE_LAYERS))]
    for m in layers:
        m.disable_lora = True
    try:
        yield
    finally:
        for m in layers:
            m.disable_lora = False


def process_parameters() -> int:
    """Elements of every parameter alive in this process (the garbage collector's view, so nothing
    is missed, after a collection): a run adds one copy of the base weights for LoRA or
    reference-free losses, two for full DPO/KTO."""
    import gc

    from paddle.base.framework import EagerParamBase

    gc.collect()
    return sum(int(o.numel()) for o in gc.get_objects() if isinstance(o, EagerParamBase))
