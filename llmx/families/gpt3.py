"""GPT-3 style (PaddleNLP's GPTForCausalLM). Its learned positions follow the prefix; its generate passes
attention_mask=None (hence the prefix mask "ones_in_front_or_none"). Hugging Face's layout is GPT-2's
(GPT2LMHeadModel: Conv1D weights [in, out] as PaddleNLP's, q/k/v fused in c_attn, the head tied)."""
from __future__ import annotations

from typing import Any, Dict

from llmx.errors import ConfigError
from llmx.families import llama
from llmx.families.formulas import gpt_opt_layer
from llmx.families.record import Family, Params

# transformers' GPT-2 activations that are the tanh-approximated GELU, the one PaddleNLP's GPT applies: its
# decoder layer calls its activation with approximate=True ("gelu", the only name it builds, is tanh's).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# GPT-2's config.json names (GPT2Config) of GPTConfig's keys.
GPT2_KEYS = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
             "max_position_embeddings": "n_positions", "intermediate_size": "n_inner",
             "hidden_dropout_prob": "resid_pdrop", "attention_probs_dropout_prob": "attn_pdrop",
             "layer_norm_eps": "layer_norm_epsilon"}


def count_params(hp: Dict[str, Any]) -> Params:
    """GPT: learned position embeddings (max_position_embeddings), final LayerNorm; lm_head tied."""
    h, V = hp["hidden_size"], hp["vocab_size"]
    embed = V * h + hp["max_position_embeddings"] * h
    return Params(gpt_opt_layer(h, hp["intermediate_size"]), hp["num_hidden_layers"], embed=embed,
                  head=2 * h + V * h, shared=V * h)


def from_gpt2(hf: Dict[str, Any]) -> Dict[str, Any]:
    """GPTConfig's values of a GPT-2 config.json that it does not state as such; what PaddleNLP's GPT cannot
    compute is refused, one line each."""
    def refuse(why: str):
        raise ConfigError(f"GPT-2 checkpoint: {why}: PaddleNLP's GPT (model family gpt3) cannot compute it")

    if hf.get("activation_function", "gelu_new") not in TANH_GELU:
        refuse(f"activation_function={hf['activation_function']!r} (it applies the tanh GELU, gelu_new, only)")
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        refuse(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (its LayerNorms fix epsilon at 1e-5)")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        refuse("attention scores not scaled by 1/sqrt(head_dim) alone (scale_attn_weights, scale_attn_by_inverse_layer_idx)")
    if hf.get("add_cross_attention", False):
        refuse("add_cross_attention=true")
    if not hf.get("tie_word_embeddings", True):
        refuse("tie_word_embeddings=false (GPTForCausalLM always ties its head to the embedding)")
    return {"hidden_activation": "gelu", "intermediate_size": hf.get("n_inner") or 4 * hf["n_embd"]}


def to_gpt2(hf: Dict[str, Any]) -> Dict[str, Any]:
    """The GPT-2 config.json of a GPTConfig's (keys already renamed): its activation under GPT-2's name."""
    if not hf.get("normalize_before", True):
        raise ConfigError("model family gpt3: normalize_before=false (LayerNorm after each block) has no GPT-2 "
                          "equivalent: not exported to Hugging Face")
    if hf.get("hidden_activation", "gelu") != "gelu":
        raise ConfigError(f"model family gpt3: hidden_activation={hf['hidden_activation']!r} has no GPT-2 "
                          f"equivalent: not exported to Hugging Face")
    out = {k: v for k, v in hf.items() if k not in ("hidden_activation", "hidden_act", "normalize_before")}
    return {**out, "activation_function": "gelu_new"}


FAMILY = Family(
    "gpt3", "GPTForCausalLM", "GPTConfig",
    (".*qkv_proj.*", ".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*out_proj.*", ".*linear1.*", ".*linear2.*"),
    pipeline_class="GPTForCausalLMPipe", prefix_cache="batch_seq_heads", prefix_mask="ones_in_front_or_none",
    packing=True, kv_heads=None,
    defaults=dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512),
    aliases=llama.GPT_NAMES, count_params=count_params,
    hf_model_type="gpt2", hf_architecture="GPT2LMHeadModel", hf_config_keys=GPT2_KEYS,
    hf_config_in=from_gpt2, hf_config_out=to_gpt2)
