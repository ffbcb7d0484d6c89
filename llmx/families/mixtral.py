"""Mixtral (PaddleNLP's MixtralForCausalLM): LLaMA's attention, a mixture of gated-MLP experts. The
router (`gate`) stays frozen under LoRA, as in PaddleNLP's llm tools; w1/w2/w3 are the experts."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import llama
from llmx.families.fixes import before_build, mix_experts
from llmx.families.formulas import llama_like
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """num_local_experts gated MLPs and a router per layer; its class always builds its own lm_head."""
    return llama_like(hp, experts=hp["num_local_experts"], ties=False, active_experts=hp["num_experts_per_tok"])


@before_build
def mixtral_moe_routing(model=None) -> None:
    """PaddleNLP's MixtralSparseMoeBlock indexes routing weights with `paddle.where(cond)`, whose output
    became 1-D in paddle 3.x, so every Mixtral forward fails ([n, hidden] * [n]) (paddlenlp 3.0.0b4 on
    paddle 3.3.1). Replace its forward with top-k routing by per-expert token weights. Can go when a
    Mixtral forward runs on the pinned paddle without it."""
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers.mixtral.modeling import MixtralSparseMoeBlock

    def forward(self, hidden_states):
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.reshape([-1, hidden])
        router_logits = self.gate(x)
        probs = F.softmax(router_logits.astype("float32"), axis=-1)
        top_w, top_e = paddle.topk(probs, self.top_k, axis=-1)
        top_w = (top_w / top_w.sum(axis=-1, keepdim=True)).astype(x.dtype)
        out = mix_experts(x, self.experts, top_e, top_w)
        return out.reshape([batch, seq, hidden]), router_logits

    MixtralSparseMoeBlock.forward = forward


FAMILY = Family(
    "mixtral", "MixtralForCausalLM", "MixtralConfig",
    (".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*o_proj.*", ".*w1.*", ".*w2.*", ".*w3.*"),
    rope_layout="batch_seq_heads_dim",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=dict(llama.DEFAULTS, intermediate_size=14336, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2),
    count_params=count_params, fixes=(mixtral_moe_routing,),
    hf_model_type="mixtral", hf_architecture="MixtralForCausalLM", sp_tokenizer="LlamaTokenizer")
