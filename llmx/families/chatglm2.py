"""ChatGLM2 / ChatGLM3 (PaddleNLP's ChatGLMv2ForCausalLM). PaddleNLP's ChatGLM2 always uses
multi_query_group_num KV groups (HF's multi_query_attention is not read)."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families import chatglm
from llmx.families.fixes import before_build
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """ChatGLM2/3: multi-query attention with multi_query_group_num K/V groups of head size hidden/heads,
    a SwiGLU MLP fused as one h -> 2*ffn Linear, biases per add_qkv_bias/add_bias_linear, RMSNorm (or LayerNorm
    with bias), its own output_layer (never tied)."""
    h, V, ff = hp["hidden_size"], hp["vocab_size"], hp["ffn_hidden_size"]
    qkv = h + 2 * (h // hp["num_attention_heads"]) * hp["multi_query_group_num"]
    linear_bias = 1 if hp["add_bias_linear"] else 0
    qkv_bias = 1 if hp["add_bias_linear"] or hp["add_qkv_bias"] else 0
    norm = h if hp["rmsnorm"] else 2 * h
    attention = h * qkv + qkv_bias * qkv + h * h + linear_bias * h
    mlp = h * 2 * ff + linear_bias * 2 * ff + ff * h + linear_bias * h
    final_norm = norm if hp["post_layer_norm"] else 0
    return Params(attention + mlp + 2 * norm, hp["num_hidden_layers"], embed=V * h, head=final_norm + V * h)


@before_build
def chatglm2_pipeline_position_ids(model=None) -> None:
    """ChatGLMv2ForCausalLMPipe's stages pass (hidden, mask, position_ids, rotary, ...) and drop the Nones,
    and the next stage reads them back by count: without position_ids the rotary table lands in
    position_ids' place and every block runs without rotary embeddings (paddlenlp 3.0.0b4). Give the
    embedding stage explicit positions (0..s-1, what the single model uses when it has none). Can go when
    the pipeline stages pass their arguments by name or keep the Nones."""
    import paddle
    from paddlenlp.transformers.chatglm_v2 import modeling_pp

    forward = modeling_pp.EmbeddingPipe.forward
    if getattr(forward, "llmx_fixed", False):
        return

    def with_positions(self, args):
        input_ids, attention_mask, position_ids, *_ = modeling_pp.parse_args(args)
        if position_ids is None and attention_mask is not None:
            batch, seq = input_ids.shape
            position_ids = paddle.arange(seq, dtype="int64").unsqueeze(0).expand([batch, seq])
            args = (input_ids, attention_mask, position_ids)
        return forward(self, args)

    with_positions.llmx_fixed = True
    modeling_pp.EmbeddingPipe.forward = with_positions


FAMILY = Family(
    "chatglm2", "ChatGLMv2ForCausalLM", "ChatGLMv2Config", chatglm.LORA, pipeline_class="ChatGLMv2ForCausalLMPipe",
    no_rope_scaling="ChatGLM2 builds one interleaved rotary table over half of each head at seq_length (its own code's rope_ratio): llmx does not rebuild it yet",
    prefix_cache="seq_batch_heads", packing=True, packing_with_prefix=True, kv_heads="multi_query_group_num",
    fixes=(chatglm2_pipeline_position_ids,), hidden_seq_first=True,
    defaults=dict(vocab_size=65024, hidden_size=4096, num_hidden_layers=28, num_attention_heads=32,
                  ffn_hidden_size=13696, multi_query_group_num=1, add_bias_linear=False, add_qkv_bias=False,
                  rmsnorm=True, post_layer_norm=True),
    aliases={"num_layers": "num_hidden_layers", "padded_vocab_size": "vocab_size"}, count_params=count_params,
    hf_model_type="chatglm", hf_architecture="ChatGLMModel", hf_marker="multi_query_group_num",
    hf_map_prefix=("chatglm_v2.", "transformer."))
