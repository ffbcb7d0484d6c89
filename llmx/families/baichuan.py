"""Baichuan. PaddleNLP has no Baichuan class: Baichuan checkpoints load as LlamaForCausalLM (13B:
alibi=true), so a saved Baichuan reads as a Llama; Hugging Face keeps q/k/v fused as W_pack."""
from __future__ import annotations

from llmx.families import llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family

FAMILY = Family(
    "baichuan", "LlamaForCausalLM", "LlamaConfig", llama.FUSED_LORA, pipeline_class="LlamaForCausalLMPipe",
    rope_layout="batch_seq_heads_dim",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=llama.DEFAULTS, aliases=llama.GPT_NAMES, count_params=llama_like, owns_architecture=False,
    hf_model_type="baichuan", hf_architecture="BaichuanForCausalLM", hf_fused_qkv="W_pack",
    sp_tokenizer="LlamaTokenizer")
