"""Per-family hooks for paddlenlp.peft prefix tuning (PrefixModelForCausalLM).

The prefix encoder yields one tensor [batch, prefix_len, 2 * num_layers, kv_heads, head_dim].
`postprocess_past_key_value` turns it into the per-layer (key, value) cache in the layout that
family's attention concatenates in front of its own keys/values; `pad_attention_mask` widens the
mask over the prefix (None = PrefixModelForCausalLM's default: prepend ones on the last axis).
Yuan is absent on purpose: in training it rebuilds its own [b, 1, s, s] mask and ignores a cache.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import paddle


def _per_layer(kv: paddle.Tensor, perm) -> tuple:
    # perm puts the 2*layers axis first in the family's layout; first half are keys, second half values.
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
    """OPT only reuses a cache given as its MultiHeadAttention.Cache namedtuple ([batch, heads, seq, head_dim])."""
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
    "llama": (None, batch_seq_heads),  # LlamaAttention concatenates the past on axis 1
    "baichuan": (None, batch_seq_heads),  # runs on the Llama code
    "qwen": (None, batch_seq_heads),  # QWenAttention concatenates on axis 1
    "qwen2": (None, batch_seq_heads),  # Qwen2Attention concatenates on axis 1
    "mixtral": (None, batch_seq_heads),  # MixtralAttention concatenates on axis 1
    "gemma": (None, batch_seq_heads),  # GemmaAttention concatenates on axis 1
    "bloom": (None, batch_seq_heads),  # BloomAttention concatenates on axis 1 (in this paddlenlp)
    # GPT concatenates on axis 1; its generate passes attention_mask=None, which the default pad can't take.
    "gpt3": (ones_in_front_or_none, batch_seq_heads),
    "mistral": (None, batch_heads_seq),  # MistralAttention keeps heads before seq (axis 2)
    "opt": (None, opt_cache),  # heads before seq, and it must be OPT's Cache namedtuple
    # ChatGLM's 4-D mask means 1 = attend here, so the default ones-padding is right.
    "chatglm": (None, seq_batch_heads),  # sequence-first layout
    "chatglm2": (None, seq_batch_heads),  # sequence-first layout; kv heads = multi_query_group_num
}


def prefix_hooks(family: str) -> Tuple[Optional[Callable], Callable]:
    """Return (pad_attention_mask, postprocess_past_key_value) for `family`."""
    try:
        return _HOOKS[family]
    except KeyError:
        raise ValueError(
            f"prefix tuning is not supported for model family {family!r}; supported: {', '.join(sorted(_HOOKS))}"
        ) from None


def prefix_dims(family: str, config) -> dict:
    """PrefixConfig sizes: hidden_size must be heads * head_dim (Gemma-7B's head_dim is not hidden / heads)."""
    heads = config.num_attention_heads
    layers = config.n_layer if family == "bloom" else config.num_hidden_layers
    # Gemma sets head_dim, QWen and ChatGLM2 set kv_channels; the rest use hidden_size / heads.
    head_dim = getattr(config, "head_dim", None) or getattr(config, "kv_channels", None) or config.hidden_size // heads
    kv_heads = config.multi_query_group_num if family == "chatglm2" else getattr(config, "num_key_value_heads", None)
    return dict(
        num_attention_heads=heads,
        num_hidden_layers=layers,
        hidden_size=heads * head_dim,
        multi_query_group_num=kv_heads,
    )
