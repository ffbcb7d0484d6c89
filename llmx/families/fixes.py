"""Workarounds for bugs in paddlenlp 3.0.0b4 model families, named by the family table.

Each fix names the upstream problem; delete it (and its name in llmx.families) when the
pinned paddlenlp fixes it. Paddle is imported inside the fixes, so listing them is cheap.
"""
from __future__ import annotations


def mixtral_moe_routing(model=None) -> None:
    """Before build. PaddleNLP's MixtralSparseMoeBlock indexes routing weights with
    `paddle.where(cond)`, whose output became 1-D in paddle 3.x, so every Mixtral forward fails
    ([n, hidden] * [n]). Replace its forward with top-k routing by per-expert token weights."""
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers.mixtral.modeling import MixtralSparseMoeBlock

    def forward(self, hidden_states):
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

    MixtralSparseMoeBlock.forward = forward


def bloom_zeroed_linears(model=None) -> None:
    """After random init. BLOOM's _init_weights zeroes every Linear weight (it meant the bias),
    leaving a random-init BLOOM with all-zero attention and MLP weights that never train."""
    if model is None:
        return
    import paddle

    std = getattr(model.config, "initializer_range", 0.02)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Linear) and float(layer.weight.abs().max()) == 0.0:
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))


BEFORE_BUILD = {"mixtral_moe_routing"}
AFTER_RANDOM_INIT = {"bloom_zeroed_linears"}


def apply(names, phase: set, model=None) -> None:
    """Run the fixes among `names` that belong to `phase` (BEFORE_BUILD or AFTER_RANDOM_INIT)."""
    for name in names:
        if name in phase:
            globals()[name](model)
