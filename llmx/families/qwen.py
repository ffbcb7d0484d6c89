"""QWen v1 (PaddleNLP's QWenForCausalLM)."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families.fixes import before_build
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """QWen v1: fused c_attn with bias, c_proj, and an MLP of width intermediate_size // 2 (w1, w2 gated, c_proj);
    no_bias (the default) drops every other bias. RMSNorm. lm_head never tied."""
    h, V = hp["hidden_size"], hp["vocab_size"]
    proj, ff = hp["kv_channels"] * hp["num_attention_heads"], hp["intermediate_size"] // 2
    bias = 0 if hp["no_bias"] else 1
    attention = h * 3 * proj + 3 * proj + proj * h + bias * h
    mlp = 2 * (h * ff + bias * ff) + ff * h + bias * h
    return Params(attention + mlp + 2 * h, hp["num_hidden_layers"], embed=V * h, head=h + V * h)


@before_build
def qwen_pipeline_attention_mask(model=None) -> None:
    """QWenForCausalLMPipe's embedding stage calls QWenModel._prepare_decoder_attention_mask, which
    paddlenlp 3.0.0b4's QWenModel lacks (its forward builds the mask inline: get_masks, then 0 or the
    dtype's minimum): give it one that builds the same additive mask. Can go when QWenModel has its own
    (this fix then steps aside by itself)."""
    import paddle
    from paddlenlp.transformers.qwen.modeling import QWenModel

    if hasattr(QWenModel, "_prepare_decoder_attention_mask"):
        return

    def prepare(attention_mask, input_shape, past_length, dtype):
        allowed = QWenModel.get_masks(None, input_shape[0], input_shape[1], past_length, padding_mask=attention_mask)
        return paddle.where(allowed, paddle.zeros(allowed.shape, dtype), paddle.full(allowed.shape, paddle.finfo(dtype).min, dtype))

    QWenModel._prepare_decoder_attention_mask = staticmethod(prepare)


FAMILY = Family(
    "qwen", "QWenForCausalLM", "QWenConfig",
    (".*attn.c_attn.*", ".*attn.c_proj.*", ".*mlp.w1.*", ".*mlp.w2.*", ".*mlp.c_proj.*"),
    no_static="paddle.jit.to_static (paddle 3.3.1) fails tracing PaddleNLP's QWen model (a TypeError in its code); "
              "use stage.mode=dynamic",
    pipeline_class="QWenForCausalLMPipe", prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    no_rope_scaling="QWen v1 scales its rotary embeddings its own way: use_dynamic_ntk and use_logn_attn",
    kv_heads=None, fixes=(qwen_pipeline_attention_mask,),
    defaults=dict(vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  kv_channels=128, intermediate_size=22016, no_bias=True),
    count_params=count_params, hf_model_type="qwen", hf_architecture="QWenLMHeadModel")
