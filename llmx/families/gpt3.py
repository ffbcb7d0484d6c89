"""GPT-3 style (PaddleNLP's GPTForCausalLM). Its learned positions follow the prefix; its generate passes
attention_mask=None (hence the prefix mask "ones_in_front_or_none")."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import llama
from llmx.families.formulas import gpt_opt_layer
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """GPT: learned position embeddings (max_position_embeddings), final LayerNorm; lm_head tied."""
    h, V = hp["hidden_size"], hp["vocab_size"]
    embed = V * h + hp["max_position_embeddings"] * h
    return Params(gpt_opt_layer(h, hp["intermediate_size"]), hp["num_hidden_layers"], embed=embed,
                  head=2 * h + V * h, shared=V * h)


FAMILY = Family(
    "gpt3", "GPTForCausalLM", "GPTConfig",
    (".*qkv_proj.*", ".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*out_proj.*", ".*linear1.*", ".*linear2.*"),
    pipeline_class="GPTForCausalLMPipe", prefix_cache="batch_seq_heads", prefix_mask="ones_in_front_or_none",
    packing=True, kv_heads=None,
    defaults=dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512),
    aliases=llama.GPT_NAMES, count_params=count_params)
