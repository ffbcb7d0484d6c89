"""Per-family hooks for paddlenlp.peft prefix tuning (PrefixModelForCausalLM).

The prefix encoder yields one tensor [batch, prefix_len, 2 * num_layers, kv_heads, head_dim];
`postprocess_past_key_value` turns it into the per-layer (key, value) cache that family's
attention concatenates in front of its own keys/values, and `pad_attention_mask` (None means
PrefixModelForCausalLM's default: prepend ones on the last axis) widens the mask to cover it.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import paddle


def _per_layer(kv: paddle.Tensor, perm) -> tuple:
    # Move the 2*layers axis to the front in the family's cache layout, first half keys, second half values.
    keys, values = paddle.transpose(kv, perm=perm).split(2)
    return tuple(zip(keys, values))


def batch_seq_heads(kv):
    """Cache as [batch, seq, heads, head_dim] per layer."""
    return _per_layer(kv, [2, 0, 1, 3, 4])


def batch_heads_seq(kv):
    """Cache as [batch, heads, seq, head_dim] per layer."""
    return _per_layer(kv, [2, 0, 3, 1, 4])


def seq_batch_heads(kv):
    """Cache as [seq, batch, heads, head_dim] per layer."""
    return _per_layer(kv, [2, 1, 0, 3, 4])


def opt_cache(kv):
    """OPT only reuses a cache that is its MultiHeadAttention.Cache namedtuple, [batch, heads, seq, head_dim]."""
    from paddlenlp.transformers.opt.modeling import MultiHeadAttention

    return tuple(MultiHeadAttention.Cache(k, v) for k, v in batch_heads_seq(kv))


def ones_in_front_or_none(input_ids_shape, num_prefix_tokens, attention_mask):
    """Prepend `num_prefix_tokens` attend-everywhere columns; leave a missing mask missing."""
    if attention_mask is None:
        return None
    shape = list(attention_mask.shape)
    shape[-1] = num_prefix_tokens
    return paddle.concat([paddle.ones(shape, dtype=attention_mask.dtype), attention_mask], axis=-1)


# family -> (pad_attention_mask, postprocess_past_key_value)
_HOOKS = {
    "llama": (None, batch_seq_heads),  # LlamaAttention concatenates past keys on axis 1
    "baichuan": (None, batch_seq_heads),  # runs on the Llama code
    "qwen": (None, batch_seq_heads),  # QWenAttention concatenates on axis 1
    "qwen2": (None, batch_seq_heads),  # Qwen2Attention concatenates on axis 1
    "mixtral": (None, batch_seq_heads),  # MixtralAttention concatenates on axis 1
    "gemma": (None, batch_seq_heads),  # GemmaAttention concatenates on axis 1
    # GPT's attention concatenates on axis 1; its generate drops attention_mask, which the default pad can't take.
    "gpt3": (ones_in_front_or_none, batch_seq_heads),
    "bloom": (None, batch_seq_heads),  # BloomAttention concatenates on axis 1 (this paddlenlp version)
    "mistral": (None, batch_heads_seq),  # MistralAttention keeps heads before seq (axis 2)
    "opt": (None, opt_cache),  # heads before seq, wrapped in its Cache namedtuple
    # ChatGLM v1's 4-D mask uses 1 = attend, so the default (prepend ones on the last axis) is right.
    "chatglm": (None, seq_batch_heads),  # sequence-first layout
    "chatglm2": (None, seq_batch_heads),  # sequence-first layout, kv heads = multi_query_group_num
}


def prefix_hooks(family: str) -> Tuple[Optional[Callable], Callable]:
    """Return (pad_attention_mask, postprocess_past_key_value) for `family`."""
    try:
        return _HOOKS[family]
    except KeyError:
        raise ValueError(
            f"prefix tuning is not supported for model family {family!r}; supported: {', '.join(sorted(_HOOKS))}"
        ) from None
