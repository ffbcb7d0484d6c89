"""Per-family hooks for paddlenlp.peft prefix tuning (PrefixModelForCausalLM).

The prefix encoder yields one tensor [batch, prefix_len, 2 * num_layers, kv_heads, head_dim].
`postprocess_past_key_value` turns it into the per-layer (key, value) cache in the layout that
family's attention concatenates in front of its own keys/values; `pad_attention_mask` widens the
mask over the prefix (None = PrefixModelForCausalLM's default: prepend ones on the last axis).
Which layout each family uses is in the family table (llmx.families).
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


# The layout names llmx.families uses (Family.prefix_cache / Family.prefix_mask).
CACHE_LAYOUTS = {"batch_seq_heads": batch_seq_heads, "batch_heads_seq": batch_heads_seq,
                 "seq_batch_heads": seq_batch_heads, "opt_cache": opt_cache}
MASK_PADDERS = {"ones_in_front_or_none": ones_in_front_or_none}


def prefix_hooks(fam) -> Tuple[Optional[Callable], Callable]:
    """(pad_attention_mask, postprocess_past_key_value) for a family of llmx.families
    (pad None = PrefixModelForCausalLM's default: prepend ones on the last axis)."""
    if fam.prefix_cache is None:
        raise ValueError(f"prefix tuning is not supported for model family {fam.name}: {fam.no_prefix}")
    return MASK_PADDERS.get(fam.prefix_mask), CACHE_LAYOUTS[fam.prefix_cache]


def prefix_dims(fam, config) -> dict:
    """PrefixConfig sizes: hidden_size must be heads * head_dim (Gemma-7B's head_dim is not hidden / heads)."""
    heads = getattr(config, fam.heads)
    layers = getattr(config, fam.layers)
    # Gemma sets head_dim, QWen and ChatGLM2 set kv_channels; the rest use hidden_size / heads.
    head_dim = getattr(config, "head_dim", None) or getattr(config, "kv_channels", None) or config.hidden_size // heads
    kv_heads = getattr(config, fam.kv_heads, None) if fam.kv_heads else None
    return dict(
        num_attention_heads=heads,
        num_hidden_layers=layers,
        hidden_size=heads * head_dim,
        multi_query_group_num=kv_heads,
    )
