"""Gemma 2 (llmx.models.gemma2, on PaddleNLP's Gemma): Gemma with pre- and post-norms around attention and
the MLP, alternating sliding-window and full attention, and attention and final logit soft-capping."""
from __future__ import annotations

from llmx.families import llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family

# What llmx.models.gemma2 and gemma3 share in their records.
NO_STATIC = ("paddle.jit.to_static (paddle 3.3.1) fails tracing its model (a rank mismatch in the traced program); "
             "use stage.mode=dynamic")


def gemma2_params(hp, extra_per_layer=0):
    """LLaMA's count with head_dim, plus the two norms around the MLP (and `extra_per_layer`)."""
    return llama_like(hp, layer_extra=2 * hp["hidden_size"] + extra_per_layer)


FAMILY = Family(
    "gemma2", "Gemma2ForCausalLM", "Gemma2Config", llama.LORA, classes="llmx.models.gemma2",
    no_sequence_parallel="its attention (llmx.models.gemma2) is not written for sequence-parallel layers",
    rope_layout="batch_seq_heads_dim", prefix_cache="batch_seq_heads", packing=True, no_static=NO_STATIC,
    defaults=dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True),
    count_params=gemma2_params,
    hf_model_type="gemma2", hf_architecture="Gemma2ForCausalLM", sp_tokenizer="GemmaTokenizer",
    hf_config_extra={"hidden_activation": "gelu_pytorch_tanh"})
