"""LLaMA / Llama 2 (PaddleNLP's LlamaForCausalLM), and the LoRA targets, defaults and spellings its
descendants share."""
from __future__ import annotations

from llmx.families.formulas import llama_like
from llmx.families.record import Family

LORA = (".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*o_proj.*", ".*gate_proj.*", ".*up_proj.*", ".*down_proj.*")
# fuse_attention_qkv / fuse_attention_ffn name the fused projections qkv_proj / gate_up_fused_proj
FUSED_LORA = LORA + (".*qkv_proj.*", ".*gate_up_fused_proj.*")
DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=None, tie_word_embeddings=False)
# Other spellings the GPT-style config classes accept (their `attribute_map`), e.g. in a config.json.
GPT_NAMES = {"n_positions": "max_position_embeddings", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
             "n_head": "num_attention_heads", "n_inner": "intermediate_size"}

FAMILY = Family(
    "llama", "LlamaForCausalLM", "LlamaConfig", FUSED_LORA, pipeline_class="LlamaForCausalLMPipe",
    rope_layout="batch_seq_heads_dim",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=DEFAULTS, aliases=GPT_NAMES, count_params=llama_like,
    hf_model_type="llama", hf_architecture="LlamaForCausalLM", sp_tokenizer="LlamaTokenizer")
