"""Baichuan 2 (7B with RoPE, 13B with ALiBi): PaddleNLP's Llama with Baichuan 2's NormHead (unit-norm head rows),
written in llmx.models.baichuan2. Its Hugging Face checkpoints are Baichuan's (model_type baichuan, fused
W_pack), told apart by z_loss_weight, a key only Baichuan 2's config class has."""
from __future__ import annotations

from llmx.families import baichuan, llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family

FAMILY = Family(
    "baichuan2", "Baichuan2ForCausalLM", "LlamaConfig", llama.FUSED_LORA, pipeline_class="Baichuan2ForCausalLMPipe",
    rope_layout="batch_seq_heads_dim",  # (the 7B's; the 13B's ALiBi refuses a scaling)
    no_static="paddle.jit.to_static (paddle 3.3.1) fails on its model with a RecursionError; use stage.mode=dynamic",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=llama.DEFAULTS, aliases=llama.GPT_NAMES, count_params=llama_like,
    hf_model_type="baichuan", hf_architecture="BaichuanForCausalLM", hf_marker="z_loss_weight",
    hf_config_extra={"z_loss_weight": 0}, hf_fused_qkv="W_pack",
    hf_config_in=baichuan.alibi_from_hf, hf_config_out=baichuan.alibi_to_hf,
    sp_tokenizer="LlamaTokenizer", classes="llmx.models.baichuan2")
