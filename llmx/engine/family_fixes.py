"""Workarounds for bugs in paddlenlp 3.0.0b4 model families, applied when a family is built.

Each fix names the bug it works around; delete it when the pinned paddlenlp fixes it.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F


def _mixtral_moe_forward(self, hidden_states):
    """Top-k expert routing. PaddleNLP's version indexes with `paddle.where`, whose
    output became 1-D in paddle 3.x, so every Mixtral forward fails; this one uses
    per-expert token weights instead."""
    batch, seq, hidden = hidden_states.shape
    x = hidden_states.reshape([-1, hidden])
    router_logits = self.gate(x)
    probs = F.softmax(router_logits.astype("float32"), axis=-1)
    top_w, top_e = paddle.topk(probs, self.top_k, axis=-1)
    top_w = (top_w / top_w.sum(axis=-1, keepdim=True)).astype(x.dtype)
    out = paddle.zeros_like(x)
    for e, expert in enumerate(self.experts):
        hit = top_e == e  # [tokens, k]
        rows = paddle.nonzero(hit.any(axis=-1)).flatten()
        if rows.shape[0] == 0:
            continue
        weight = (top_w * hit.astype(x.dtype)).sum(axis=-1)  # this expert's weight per token
        y = expert(paddle.gather(x, rows)) * paddle.gather(weight, rows).unsqueeze(-1)
        out = out.index_add(rows, 0, y.astype(x.dtype))
    return out.reshape([batch, seq, hidden]), router_logits


def _reinit_zeroed_linear_weights(model) -> None:
    """BLOOM's _init_weights zeroes every Linear weight (it meant the bias), leaving a
    random-init BLOOM with all-zero attention and MLP weights that never train."""
    std = getattr(model.config, "initializer_range", 0.02)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Linear) and float(layer.weight.abs().max()) == 0.0:
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))


def before_build(family: str) -> None:
    if family == "mixtral":
        from paddlenlp.transformers.mixtral.modeling import MixtralSparseMoeBlock

        MixtralSparseMoeBlock.forward = _mixtral_moe_forward


def after_random_init(family: str, model) -> None:
    if family == "bloom":
        _reinit_zeroed_linear_weights(model)
