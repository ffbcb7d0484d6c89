"""Qwen2-MoE (PaddleNLP's Qwen2MoeForCausalLM): Qwen2's attention (q/k/v biases), routed gated-MLP experts
plus one shared expert behind a sigmoid gate in every layer (Qwen1.5-MoE, Qwen2-57B-A14B). The router (`gate`)
and the shared expert's gate stay frozen under LoRA, as for Mixtral."""
from __future__ import annotations

from typing import Any, Dict

from llmx.errors import ConfigError
from llmx.families import moe
from llmx.families.fixes import before_build
from llmx.families.record import Family, Params

LORA = (".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*o_proj.*", ".*gate_proj.*", ".*up_proj.*", ".*down_proj.*")


def count_params(hp: Dict[str, Any]) -> Params:
    """Routed experts, and a shared gated MLP with its 1-output gate that every token uses."""
    h = hp["hidden_size"]
    shared = 3 * h * hp["shared_expert_intermediate_size"] + h
    return moe.routed_layer_params(hp, shared=shared, qkv_bias=True)


@before_build
def qwen2_moe_routing(model=None) -> None:
    """PaddleNLP's Qwen2MoeSparseMoEBlock is a GShard-style capacity layer whose forward fails on paddle 3.3
    (its capacity bookkeeping mixes int64 and int32: no type promotion), so no Qwen2-MoE model runs; besides,
    its router weight starts at a constant 1.0 (every expert ties, so a random init routes by index), it
    splits the experts over the data-parallel group whenever one exists, and it returns its auxiliary loss
    where the decoder expects router logits (paddlenlp 3.0.0b4 on paddle 3.3.1). Replace its construction and
    forward with transformers' Qwen2MoeSparseMoeBlock: a Linear router, softmax top-k (renormalised by
    norm_topk_prob), every expert local, the shared expert added through its sigmoid gate; the same tensor
    names. Can go when upstream runs and routes as transformers does."""
    import paddle.nn.functional as F
    from paddle import nn
    from paddlenlp.transformers.qwen2_moe.modeling import (Qwen2MoeForCausalLM, Qwen2MoeMLP,
                                                           Qwen2MoeSparseMoEBlock)

    def __init__(self, config):
        if getattr(config, "mlp_only_layers", None) or config.decoder_sparse_step != 1:
            raise ConfigError("model family qwen2_moe: dense layers (mlp_only_layers, decoder_sparse_step > 1) "
                              "are not supported by PaddleNLP's Qwen2MoeDecoderLayer (model=qwen3_moe's layers are)")
        nn.Layer.__init__(self)
        self.config = config
        moe.add_router_and_experts(self, config, lambda: Qwen2MoeMLP(config))
        self.shared_expert = Qwen2MoeMLP(config, is_shared=True)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias_attr=False)

    def forward(self, hidden_states):
        out, router_logits = moe.routed_experts(self, hidden_states, self.norm_topk_prob)
        shared = F.sigmoid(self.shared_expert_gate(hidden_states)) * self.shared_expert(hidden_states)
        return out + shared, router_logits

    Qwen2MoeSparseMoEBlock.__init__ = __init__
    Qwen2MoeSparseMoEBlock.forward = forward
    moe.router_aux_loss_logged(Qwen2MoeForCausalLM)


FAMILY = Family(
    "qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", LORA, pipeline_class="Qwen2MoeForCausalLMPipe",
    rope_layout="batch_seq_heads_dim", prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    no_static=moe.NO_STATIC,
    defaults=dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                  num_attention_heads=16, num_key_value_heads=16, moe_intermediate_size=1408,
                  shared_expert_intermediate_size=5632, num_experts=60, num_experts_per_tok=4),
    count_params=count_params, fixes=(qwen2_moe_routing,),
    hf_model_type="qwen2_moe", hf_architecture="Qwen2MoeForCausalLM")
