"""Gemma 3, text only (llmx.models.gemma3, on Gemma 2's pieces): per-head q/k RMSNorm, a RoPE base of its own
for the sliding layers, five sliding layers to one full one, no soft-capping by default."""
from __future__ import annotations

from llmx.families import llama
from llmx.families.gemma2 import NO_STATIC, gemma2_params
from llmx.families.record import Family


def gemma3_params(hp):
    return gemma2_params(hp, extra_per_layer=2 * hp["head_dim"])  # q_norm and k_norm: head_dim each


FAMILY = Family(
    "gemma3", "Gemma3ForCausalLM", "Gemma3Config", llama.LORA, classes="llmx.models.gemma3",
    no_sequence_parallel="its attention (llmx.models.gemma2's) is not written for sequence-parallel layers",
    rope_layout="batch_seq_heads_dim", prefix_cache="batch_seq_heads", packing=True, no_static=NO_STATIC,
    defaults=dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True),
    count_params=gemma3_params,
    hf_model_type="gemma3_text", hf_architecture="Gemma3ForCausalLM", sp_tokenizer="GemmaTokenizer",
    hf_config_extra={"hidden_activation": "gelu_pytorch_tanh"})
