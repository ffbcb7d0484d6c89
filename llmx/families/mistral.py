"""Mistral (PaddleNLP's MistralForCausalLM). Its rotary places positions after the prefix cache, which
per-example position ids cannot reproduce: packing, but not behind a prefix."""
from __future__ import annotations

from functools import partial

from llmx.families import llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family

FAMILY = Family(
    "mistral", "MistralForCausalLM", "MistralConfig", llama.LORA, prefix_cache="batch_heads_seq", packing=True,
    no_static="paddle.jit.to_static (paddle 3.3.1) fails in PaddleNLP's Mistral model code (a Python `if` on a "
              "tensor value, which it cannot trace); use stage.mode=dynamic",
    rope_layout="seq_dim",
    defaults=dict(llama.DEFAULTS, intermediate_size=14336, num_key_value_heads=8),
    count_params=partial(llama_like, ties=False),  # its class always builds its own lm_head
    hf_model_type="mistral", hf_architecture="MistralForCausalLM", sp_tokenizer="LlamaTokenizer")
