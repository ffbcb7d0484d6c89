"""Qwen3-MoE (llmx.models.qwen3_moe, on PaddleNLP's Qwen2-MoE blocks): q/k RMSNorm per head, head_dim from the
config, no qkv bias, routed experts without a shared one (Qwen3-30B-A3B, Qwen3-235B-A22B)."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import moe
from llmx.families.formulas import llama_like
from llmx.families.qwen2_moe import LORA
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """Routed layers, with q_norm/k_norm (head_dim each); dense layers (mlp_only_layers, decoder_sparse_step)
    are LLaMA layers of intermediate_size."""
    hp = dict(hp, head_dim=hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
    bias = bool(hp.get("attention_bias"))
    extra = 2 * hp["head_dim"] + (hp["hidden_size"] if bias else 0)  # q/k norms; o_proj's bias
    params = moe.routed_layer_params(hp, qkv_bias=bias, layer_extra=extra)
    n, step, only = hp["num_hidden_layers"], hp.get("decoder_sparse_step") or 1, set(hp.get("mlp_only_layers") or ())
    dense = sum(1 for i in range(n) if i in only or (i + 1) % step != 0)
    if dense:
        params.layers = n - dense
        params.other_layers = dense * llama_like(hp, qkv_bias=bias, layer_extra=extra).layer
    return params


FAMILY = Family(
    "qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", LORA, pipeline_class="Qwen3MoeForCausalLMPipe",
    no_sequence_parallel="its attention (llmx.models.qwen3's) is not written for sequence-parallel layers",
    rope_layout="batch_seq_heads_dim", prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    no_static=moe.NO_STATIC,
    defaults=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                  num_attention_heads=32, num_key_value_heads=4, moe_intermediate_size=768, num_experts=128,
                  num_experts_per_tok=8, tie_word_embeddings=False, decoder_sparse_step=1),
    count_params=count_params,
    hf_model_type="qwen3_moe", hf_architecture="Qwen3MoeForCausalLM", classes="llmx.models.qwen3_moe")
