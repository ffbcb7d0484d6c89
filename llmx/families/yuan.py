"""Yuan (PaddleNLP's YuanForCausalLM). Its localized-filtering convolution mixes neighbouring examples
(no packing), and in training it builds its own [b, 1, s, s] mask and rejects a prefix cache."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import llama
from llmx.families.fixes import before_build, mean_over_target_tokens
from llmx.families.formulas import llama_like
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """LLaMA's layer plus Yuan's localized filtering gate: Conv2D(h -> h/2, kernel 2x1) and
    Conv2D(h/2 -> h, 2x1), both with bias, then an RMSNorm. Its class always builds its own lm_head
    (although its config says tie_word_embeddings=True)."""
    h = hp["hidden_size"]
    return llama_like(hp, ties=False, layer_extra=2 * (h // 2) * h * 2 + h // 2 + h + h)


@before_build
def yuan_loss_over_target_tokens(model=None) -> None:
    """YuanForCausalLM's loss without use_loss_mask: see llmx.families.fixes.mean_over_target_tokens
    (paddlenlp 3.0.0b4 on paddle 3.3.1). Can go when its criterion divides by the target tokens."""
    from paddlenlp.transformers.yuan.modeling import YuanForCausalLM

    mean_over_target_tokens(YuanForCausalLM)


FAMILY = Family(
    "yuan", "YuanForCausalLM", "YuanConfig", llama.LORA,
    no_tensor_parallel="PaddleNLP 3.0.0b4 splits Yuan's fused q/k projections inconsistently (a pretrained "
                       "checkpoint fails to load split; a split random init computes other attention than one "
                       "process); use dp or sharding",
    no_prefix="in training Yuan builds its own attention mask and rejects a prefix cache",
    rope_layout="batch_heads_seq_dim",
    engine_cache="whole_sequence",
    no_padded_batch="Yuan's localized filtering convolves each token with the two before it, pad tokens included, "
                    "and with reset_position_ids it builds its own causal mask, ignoring the attention mask",
    defaults=dict(vocab_size=135040, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                  num_attention_heads=32, num_key_value_heads=None),
    count_params=count_params, fixes=(yuan_loss_over_target_tokens,),
    hf_model_type="yuan", hf_architecture="YuanForCausalLM")
