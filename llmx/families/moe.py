"""What the mixture-of-experts families share (mixtral, qwen2_moe, qwen3_moe): transformers' top-k routing,
the parameter count of a routed layer, and the router's auxiliary (load-balancing) loss during training.

Paddle is imported inside the functions: listing the families stays paddle-free.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional

from llmx.families.formulas import llama_like
from llmx.families.record import Params

# Static mode (llmx.infer.export) fails in PaddleNLP's Mixtral/Qwen2-MoE attention, which checks tensor shapes with
# a Python `if` that paddle.jit cannot trace (paddlenlp 3.0.0b4 on paddle 3.3.1); the routing's per-expert token
# selection has data-dependent shapes besides.
NO_STATIC = ("paddle.jit.to_static (paddle 3.3.1) fails in the attention of PaddleNLP's Mixtral/Qwen2-MoE (shape checks "
             "in Python); use stage.mode=dynamic")


# ----------------------------------------------------------------------------- routing
def top_k_routing(router_logits, top_k: int, normalize: bool):
    """(weights, experts) [tokens, top_k] of each token: the top-k of the router's softmax (in float32),
    rescaled to sum to 1 when `normalize` (Mixtral always; Qwen-MoE's norm_topk_prob), as transformers."""
    import paddle
    import paddle.nn.functional as F

    probs = F.softmax(router_logits.astype("float32"), axis=-1)
    weights, experts = paddle.topk(probs, top_k, axis=-1)
    if normalize:
        weights = weights / weights.sum(axis=-1, keepdim=True)
    return weights, experts


def mix_experts(x, experts, top_experts, top_weights):
    """The mixture-of-experts output of tokens `x` [tokens, hidden]: each token's chosen experts
    (`top_experts` [tokens, k]) weighted by `top_weights` [tokens, k], computed per expert on the tokens that
    chose it (no capacity, no dropped tokens). PaddleNLP's dispatchers fail on paddle 3.x's CPU builds
    (Mixtral's 1-D `paddle.where`, Qwen2-MoE's and DeepSeek's int32/int64 priorities): every family's routing
    fix mixes with this."""
    import paddle

    out = paddle.zeros_like(x)
    for e, expert in enumerate(experts):
        hit = top_experts == e  # [tokens, k]
        rows = paddle.nonzero(hit.any(axis=-1)).flatten()
        if rows.shape[0] == 0:  # (the same on every tensor-parallel rank: they route the same tokens)
            continue
        weight = (top_weights * hit.astype(top_weights.dtype)).sum(axis=-1)  # this expert's weight per token
        y = expert(paddle.gather(x, rows)) * paddle.gather(weight, rows).unsqueeze(-1).astype(x.dtype)
        out = out.index_add(rows, 0, y.astype(x.dtype))
    return out


def routed_experts(block, hidden_states, normalize: bool):
    """(output, router_logits) of a block's router `gate` and its `experts` (top `top_k` per token) on
    hidden states of any leading shape; each expert runs only on the tokens routed to it."""
    x = hidden_states.reshape([-1, hidden_states.shape[-1]])
    router_logits = block.gate(x)
    weights, experts = top_k_routing(router_logits, block.top_k, normalize)
    out = mix_experts(x, block.experts, experts, weights.astype(x.dtype))
    if block.training:  # for the auxiliary loss (router_aux_loss_logged)
        block.llmx_router_logits = router_logits
    return out.reshape(hidden_states.shape), router_logits


def add_router_and_experts(block, config, make_expert) -> None:
    """Give `block` what `routed_experts` reads: a bias-free linear router `gate` (hidden -> num_experts,
    PaddleNLP's [in, out] layout, initialised like every Linear), `num_experts` experts, top_k and
    norm_topk_prob from a Qwen-MoE config."""
    from paddle import nn

    block.gate = nn.Linear(config.hidden_size, config.num_experts, bias_attr=False)
    block.experts = nn.LayerList([make_expert() for _ in range(config.num_experts)])
    block.top_k = config.num_experts_per_tok
    block.norm_topk_prob = config.norm_topk_prob


# ----------------------------------------------------------------------------- parameters
def routed_layer_params(hp: Dict[str, Any], shared: int = 0, qkv_bias: bool = False, layer_extra: int = 0) -> Params:
    """A LLaMA-like layer whose MLP is `num_experts` gated MLPs of moe_intermediate_size behind a router
    (Qwen-MoE's names), `num_experts_per_tok` of them active per token, plus `shared` parameters every token
    uses (shared experts); the class builds its own lm_head."""
    routed = dict(hp, intermediate_size=hp["moe_intermediate_size"])
    return llama_like(routed, qkv_bias=qkv_bias, experts=hp["num_experts"], ties=False,
                      layer_extra=shared + layer_extra, active_experts=hp["num_experts_per_tok"])


# ----------------------------------------------------------------------------- auxiliary loss
def load_balancing_loss(router_logits, num_experts: int, top_k: int, attention_mask=None):
    """The router's auxiliary loss as transformers' `load_balancing_loss_func` (Switch Transformer eq. 4-6):
    num_experts x sum over experts of (the share of top-k picks it gets) x (its mean router probability),
    over every layer's tokens (`router_logits`: one [tokens, num_experts] per routed layer), padding left
    out where a 2-D `attention_mask` says (a packed batch's 4-D mask counts every token, as transformers).
    PaddleNLP's own version fails on an integer mask (paddle 3.3 promotes no int64 x float32)."""
    import paddle
    import paddle.nn.functional as F

    logits = paddle.concat(list(router_logits), axis=0)
    probs = F.softmax(logits.astype("float32"), axis=-1)
    picks = F.one_hot(paddle.topk(probs, top_k, axis=-1)[1], num_experts)  # [layers x tokens, top_k, experts]
    if attention_mask is None or attention_mask.ndim != 2:
        weight = paddle.ones([logits.shape[0]], dtype="float32")
    else:
        tokens = router_logits[0].shape[0]  # (a prefix-tuning mask also covers the prefix: its last columns)
        mask = attention_mask[:, attention_mask.shape[1] - tokens // attention_mask.shape[0]:]
        weight = mask.astype("float32").reshape([1, -1]).tile([len(router_logits), 1]).reshape([-1])
    picks_per_expert = (picks * weight.reshape([-1, 1, 1])).sum(axis=0) / weight.sum()
    prob_per_expert = (probs * weight.reshape([-1, 1])).sum(axis=0) / weight.sum()
    return (picks_per_expert * prob_per_expert.unsqueeze(0)).sum() * num_experts


def router_aux_loss_logged(model_class) -> None:
    """Make `model_class(labels=...)` in training measure the router's load-balancing loss
    (`load_balancing_loss`, from the router logits its MoE blocks keep) and keep it, detached, as
    `model.llmx_router_aux_loss` for the Trainer's metrics; it joins the loss (times router_aux_loss_coef)
    only where the config or the call says output_router_logits=True, as in transformers. The class's own
    router-logit outputs are not used (PaddleNLP's loss fails on llmx's integer masks): outputs keep the
    structure of output_router_logits=False."""
    forward = model_class.forward
    if getattr(forward, "llmx_aux_loss", False):
        return

    @functools.wraps(forward)
    def with_aux_loss(self, *args, labels=None, output_router_logits: Optional[bool] = None, **kwargs):
        out = forward(self, *args, labels=labels, output_router_logits=False, **kwargs)
        logits = _router_logits(self)
        if labels is None or not self.training or not logits:
            return out
        aux = load_balancing_loss(logits, logits[0].shape[-1], self.config.num_experts_per_tok,
                                  kwargs.get("attention_mask"))
        self.llmx_router_aux_loss = aux.detach()
        asked = output_router_logits if output_router_logits is not None else self.config.output_router_logits
        if not asked:
            return out
        loss = out[0] + self.config.router_aux_loss_coef * aux
        if isinstance(out, tuple):
            return (loss,) + tuple(out[1:])
        out["loss"], out["aux_loss"] = loss, aux
        return out

    with_aux_loss.llmx_aux_loss = True
    model_class.forward = with_aux_loss


def _router_logits(model) -> list:
    """The router logits the model's MoE blocks kept in its last training forward (`routed_experts`),
    taken (cleared) in layer order."""
    found = []
    for layer in model.sublayers():
        logits = getattr(layer, "llmx_router_logits", None)
        if logits is not None:
            found.append(logits)
            layer.llmx_router_logits = None
    return found
