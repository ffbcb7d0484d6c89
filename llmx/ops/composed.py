"""Paddle's composed versions of llmx's fused ops: the fallback when the kernels did not build,
and the reference the kernels are tested against. Shapes as in llmx.ops."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F


def rms_norm(x, weight, eps: float):
    return x * paddle.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def add_rms_norm(x, residual, weight, eps: float):
    h = x + residual
    return rms_norm(h, weight, eps), h


def _rotate_half(x):
    x1, x2 = paddle.chunk(x, 2, axis=-1)
    return paddle.concat([-x2, x1], axis=-1)


def rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [1 or b, s, 1, d] over the heads
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def swiglu(gate, up):
    return F.silu(gate) * up


def fused_linear_cross_entropy(hidden, weight, labels, ignore_index: int = -100, transpose_weight: bool = False,
                               reduction: str = "mean"):
    logits = paddle.matmul(hidden, weight, transpose_y=transpose_weight)
    loss = F.cross_entropy(logits, labels.unsqueeze(-1), ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return loss
    return loss / paddle.clip((labels != ignore_index).astype(loss.dtype).sum(), min=1)


def block_causal_mask(seg):
    """bool [b, 1, s, s] from segment ids [b, s]: j <= i inside one segment."""
    s = seg.shape[1]
    same = seg.unsqueeze(2) == seg.unsqueeze(1)
    return (same & paddle.tril(paddle.ones([s, s], dtype="bool"))).unsqueeze(1)


def packed_attention(q, k, v, seg, scale: float):
    heads, kv_heads = q.shape[2], k.shape[2]
    if kv_heads != heads:
        k = paddle.repeat_interleave(k, heads // kv_heads, axis=2)
        v = paddle.repeat_interleave(v, heads // kv_heads, axis=2)
    qt, kt, vt = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
    scores = paddle.matmul(qt, kt, transpose_y=True) * scale
    scores = paddle.where(block_causal_mask(seg), scores, paddle.full_like(scores, float("-inf")))
    return paddle.matmul(F.softmax(scores, axis=-1), vt).transpose([0, 2, 1, 3])
