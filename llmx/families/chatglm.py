"""ChatGLM v1 (PaddleNLP's ChatGLMForCausalLM). It needs [gMASK]/bos inputs, 4-D masks and 2-D position
ids that only its own tokenizer builds: llmx knows its shapes (plan, detection) but does not train it."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families.record import Family, Params

LORA = (".*query_key_value.*", ".*dense.*", ".*dense_h_to_4h.*", ".*dense_4h_to_h.*")  # ChatGLM v1 and v2


def count_params(hp: Dict[str, Any]) -> Params:
    """ChatGLM v1: LayerNorms with bias, every Linear with bias, GeLU MLP of inner_hidden_size; the lm_head
    is the word embedding (tied)."""
    h, V, ff = hp["hidden_size"], hp["vocab_size"], hp["inner_hidden_size"]
    layer = 2 * 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * ff + ff) + (ff * h + h)
    return Params(layer, hp["num_hidden_layers"], embed=V * h, head=2 * h + V * h, shared=V * h)


FAMILY = Family(
    "chatglm", "ChatGLMForCausalLM", "ChatGLMConfig", LORA, prefix_cache="seq_batch_heads",
    kv_heads=None, not_trainable="ChatGLM v1 is not trainable by llmx yet; use model=chatglm2 (ChatGLM2/ChatGLM3)",
    no_engine="ChatGLM v1 is not supported by llmx (use chatglm2)",
    defaults=dict(vocab_size=130528, hidden_size=4096, num_hidden_layers=28, num_attention_heads=32,
                  inner_hidden_size=16384),
    aliases={"num_layers": "num_hidden_layers"}, count_params=count_params,
    hf_model_type="chatglm", hf_architecture="ChatGLMForConditionalGeneration", hf_marker="inner_hidden_size",
    paddle_marker="inner_hidden_size")
