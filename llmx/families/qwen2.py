"""Qwen2 (PaddleNLP's Qwen2ForCausalLM): LLaMA's shape with biases on q, k and v."""
from __future__ import annotations

from functools import partial

from llmx.families import llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family

FAMILY = Family(
    "qwen2", "Qwen2ForCausalLM", "Qwen2Config", llama.LORA, pipeline_class="Qwen2ForCausalLMPipe",
    rope_layout="batch_seq_heads_dim",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    no_static="paddle.jit.to_static (paddle 3.3.1) fails in PaddleNLP's Qwen2 attention (a Python `if` on a "
              "tensor value, which it cannot trace); use stage.mode=dynamic",
    defaults=dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    count_params=partial(llama_like, qkv_bias=True),
    hf_model_type="qwen2", hf_architecture="Qwen2ForCausalLM")
