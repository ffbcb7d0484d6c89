"""Baichuan (v1: Baichuan-7B, Baichuan-13B). PaddleNLP has no Baichuan class: Baichuan checkpoints load as
LlamaForCausalLM (13B: alibi=true), so a saved Baichuan reads as a Llama; Hugging Face keeps q/k/v fused as
W_pack. Baichuan 2 (its NormHead) is llmx.families.baichuan2."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import llama
from llmx.families.formulas import llama_like
from llmx.families.record import Family


def alibi_from_hf(hf: Dict[str, Any]) -> Dict[str, Any]:
    """Baichuan's 13B code (both generations) places tokens with ALiBi and its config class has no
    max_position_embeddings (only model_max_length); the 7B's RoPE code has it."""
    return {"alibi": "max_position_embeddings" not in hf}


def alibi_to_hf(hf: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of alibi_from_hf: an ALiBi model's config.json without max_position_embeddings."""
    out = {k: v for k, v in hf.items() if k != "alibi"}
    if hf.get("alibi"):
        out.setdefault("model_max_length", out.pop("max_position_embeddings", None) or 4096)
        out.pop("max_position_embeddings", None)
    return out


FAMILY = Family(
    "baichuan", "LlamaForCausalLM", "LlamaConfig", llama.FUSED_LORA, pipeline_class="LlamaForCausalLMPipe",
    rope_layout="batch_seq_heads_dim",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=llama.DEFAULTS, aliases=llama.GPT_NAMES, count_params=llama_like, owns_architecture=False,
    hf_model_type="baichuan", hf_architecture="BaichuanForCausalLM", hf_fused_qkv="W_pack",
    hf_config_in=alibi_from_hf, hf_config_out=alibi_to_hf, sp_tokenizer="LlamaTokenizer")
