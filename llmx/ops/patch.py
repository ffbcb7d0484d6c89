"""Switching PaddleNLP's model families to llmx's fused ops: the one place that does it.

PaddleNLP 3.0.0b4's own fused flags (use_fused_rms_norm, use_fused_rope, fuse_attention_ffn's
swiglu) call GPU kernels, so on CPU llmx replaces layers itself, by behaviour rather than by name:
- every `*RMSNorm` layer with a 1-D weight and an epsilon gets a forward through llmx.ops.rms_norm;
- every MLP with gate_proj / up_proj / down_proj gets down_proj(llmx.ops.swiglu(gate, up));
- a family module's `apply_rotary_pos_emb(q, k, cos, sin, position_ids)` (Llama's form) is wrapped
  to gather cos/sin by position and call llmx.ops.rope.
Each candidate is first run both ways on a random input and switched only when the results agree
(1e-5): a family whose layer differs (Gemma's RMSNorm scales by 1 + weight, its MLP uses GELU;
ChatGLM2's rotary embedding is interleaved; LayerNorm/GELU families have nothing to match) keeps
PaddleNLP's layer, and enable() reports only the ops it switched.
The fused cross-entropy and the packed attention are llmx.ops entries but not (yet) switched into
the models: both need the model's forward restructured (hidden states instead of logits; segment
ids down to the attention).
"""
from __future__ import annotations

import logging
import sys

import numpy as np
import paddle

import llmx.ops as ops

log = logging.getLogger(__name__)
_EPS_NAMES = ("variance_epsilon", "epsilon", "eps")
_rope_wrapped: dict = {}  # module name -> original apply_rotary_pos_emb


def _agree(a, b) -> bool:
    a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
    return len(a) == len(b) and all(np.allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-5) for x, y in zip(a, b))


def _probe(shape, dtype):
    return paddle.to_tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype))


def _eps(layer):
    for name in _EPS_NAMES:
        if isinstance(getattr(layer, name, None), float):
            return getattr(layer, name)
    return None


def _switch_rms_norm(layer) -> bool:
    weight, eps = getattr(layer, "weight", None), _eps(layer)
    if weight is None or eps is None or len(weight.shape) != 1 or weight.dtype not in (paddle.float32, paddle.float64):
        return False
    original = layer.forward
    fused = lambda x: ops.rms_norm(x, layer.weight, eps)  # noqa: E731
    x = _probe([3, weight.shape[0]], "float32" if weight.dtype == paddle.float32 else "float64")
    with paddle.no_grad():
        try:
            if not _agree(original(x), fused(x)):
                return False
        except Exception:  # noqa: BLE001 - a layer of another shape of forward: not a match
            return False
    layer.forward = fused
    return True


def _switch_mlp(layer) -> bool:
    parts = [getattr(layer, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, paddle.nn.Linear) for p in parts):
        return False
    original = layer.forward

    def fused(x):
        return layer.down_proj(ops.swiglu(layer.gate_proj(x), layer.up_proj(x)))

    x = _probe([2, 3, parts[0].weight.shape[0]], "float32" if parts[0].weight.dtype == paddle.float32 else "float64")
    with paddle.no_grad():
        try:
            if not _agree(original(x), fused(x)):
                return False
        except Exception:  # noqa: BLE001
            return False
    layer.forward = fused
    return True


def _rope_wrapper(original):
    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, *args, **kwargs):
        if args or kwargs or ops.kernels() is None or q.dtype not in (paddle.float32, paddle.float64):
            return original(q, k, cos, sin, position_ids, *args, **kwargs)
        if position_ids is None:  # cos/sin [1, seq >= s, 1, d]
            c, s = cos[:, :q.shape[1], 0, :], sin[:, :q.shape[1], 0, :]
        else:  # [1, seq, 1, d] gathered by position: [b, s, d]
            c, s = cos.squeeze(axis=[0, 2])[position_ids], sin.squeeze(axis=[0, 2])[position_ids]
        return ops.rope(q, k, c, s)

    apply_rotary_pos_emb.llmx_original = original
    return apply_rotary_pos_emb


def _switch_rope(module) -> bool:
    """Wraps `module.apply_rotary_pos_emb` once per module (the wrapper calls the original whenever
    the kernels are off), after checking the two agree with and without position ids."""
    fn = getattr(module, "apply_rotary_pos_emb", None)
    if fn is None:
        return False
    if getattr(fn, "llmx_original", None) is not None:
        return True
    wrapped = _rope_wrapper(fn)
    b, s, h, d = 2, 5, 3, 8
    q, k = _probe([b, s, h, d], "float32"), _probe([b, s, 1, d], "float32") * 0.5
    angle = _probe([1, s, 1, d], "float32")
    pos = paddle.to_tensor(np.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]], dtype="int64"))
    with paddle.no_grad():
        try:
            for p in (pos, None):
                if not _agree(fn(q, k, angle.cos(), angle.sin(), p), wrapped(q, k, angle.cos(), angle.sin(), p)):
                    return False
        except Exception:  # noqa: BLE001 - another signature or layout: not a match
            return False
    module.apply_rotary_pos_emb = wrapped
    return True


def enable(model, mode: str) -> list:
    """Switch `model`'s matching layers to the fused ops under `mode` (auto | on | off); the names
    of the ops switched (empty when off, when the kernels did not load, or nothing matched)."""
    ops.reset_used()
    if not ops.configure(mode):
        return []
    switched = set()
    modules = set()
    for layer in model.sublayers(include_self=True):
        modules.add(type(layer).__module__)
        if type(layer).__name__.endswith("RMSNorm") and _switch_rms_norm(layer):
            switched.add("rms_norm")
        elif _switch_mlp(layer):
            switched.add("swiglu")
    for name in sorted(modules):
        if name.startswith("paddlenlp.transformers.") and _switch_rope(sys.modules[name]):
            switched.add("rope")
    ops.reset_used()  # the probes above ran the kernels: count only what the model runs from here on
    log.info("fused ops switched on: %s", ", ".join(sorted(switched)) or "none (no layer of this family matches)")
    return sorted(switched)
