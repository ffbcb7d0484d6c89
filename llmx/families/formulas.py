"""Parameter-count formulas several families share (a family's own formula lives in its module).

They restate PaddleNLP 3.0.0b4's layer shapes; tests/runs/test_families.py checks every family's
formula against the model PaddleNLP builds, at its `tiny` size and variants.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from llmx.families.record import Params


def llama_like(hp: Dict[str, Any], qkv_bias: bool = False, experts: Optional[int] = None, ties: bool = True,
               layer_extra: int = 0, active_experts: Optional[int] = None) -> Params:
    """LLaMA and its descendants: no biases (but `qkv_bias`: on q, k and v, not o), RMSNorm (weight only),
    gated MLP (`experts` of them, behind a router). `ties`: the class honours tie_word_embeddings (some build
    their own lm_head whatever the config says). `layer_extra`: parameters a family adds to every layer;
    `active_experts`: the experts the router picks per token (MoE: what a token uses of a layer)."""
    h, V, I = hp["hidden_size"], hp["vocab_size"], hp["intermediate_size"]
    heads, kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    head_dim = hp.get("head_dim") or h // heads  # Gemma sets it (256), the rest use hidden/heads
    q, k = heads * head_dim, kv * head_dim  # grouped-query attention: kv heads share K/V projections
    attention = h * q + 2 * h * k + q * h  # q, k, v, o projections
    if qkv_bias:
        attention += q + 2 * k
    mlp = 3 * h * I  # SwiGLU (GeGLU for Gemma): gate, up and down projections
    if experts is not None:
        mlp = experts * mlp + h * experts  # every expert is a full gated MLP; the router is h x experts, no bias
    layer = attention + mlp + 2 * h + layer_extra  # two RMSNorm weights
    tied = ties and bool(hp["tie_word_embeddings"])
    active = None if active_experts is None else layer - (experts - active_experts) * 3 * h * I
    return Params(layer, hp["num_hidden_layers"], embed=V * h, head=h + V * h, shared=V * h if tied else 0,
                  active_layer=active)


def gpt_opt_layer(h: int, ff: int) -> int:
    """A GPT/OPT decoder layer: q, k, v, out projections and the 2-matrix MLP (linear1, linear2), all with
    bias, and two LayerNorms with bias."""
    return 4 * (h * h + h) + (h * ff + ff) + (ff * h + h) + 2 * 2 * h
