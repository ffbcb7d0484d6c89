"""Qwen3, dense (llmx's Qwen3ForCausalLM in llmx.models.qwen3, on PaddleNLP's Qwen2): Qwen2's shape with q and
k RMS-normalised per head, no q/k/v biases, and a head_dim of its own (128, whatever hidden / heads is)."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """Qwen2's layer without the q/k/v biases (with o_proj's too where attention_bias adds them), plus the
    q_norm and k_norm weights (head_dim each)."""
    head_dim = hp["head_dim"]
    biases = (hp["num_attention_heads"] + 2 * hp["num_key_value_heads"]) * head_dim + hp["hidden_size"]  # q, k, v; o
    return llama_like(hp, layer_extra=2 * head_dim + (biases if hp.get("attention_bias") else 0))


FAMILY = Family(
    "qwen3", "Qwen3ForCausalLM", "Qwen3Config", llama.LORA, pipeline_class="Qwen3ForCausalLMPipe",
    no_sequence_parallel="its attention (llmx.models.qwen3) is not written for sequence-parallel layers",
    rope_layout="batch_seq_heads_dim",  # (Qwen2's rotary layer, at Qwen3's head_dim)
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, attention_bias=False,
                  tie_word_embeddings=False),
    count_params=count_params,
    hf_model_type="qwen3", hf_architecture="Qwen3ForCausalLM", classes="llmx.models.qwen3")
