"""Log-probabilities over the vocabulary, row chunk by row chunk, from log-sum-exp.

Why not `log_softmax`: Paddle 3.3.1's CPU log_softmax is quadratic in the last axis (512 rows x
8192 take 3.6 s, 64 x 49152 take 16 s, where `x - logsumexp(x)` takes 0.03 s), so at a real
vocabulary it dominates every step that calls it. Its fused `cross_entropy` is fast but takes the
log of the softmax and clamps a log-probability below -64 (log of an underflowed probability).

Each op reads the logits a chunk of rows at a time (cast to float32 per chunk, float64 stays
float64), so neither a float32 copy of the logits nor a [rows, vocab] log-probability tensor ever
exists whole. The gradients are written chunk by chunk into the one logits-sized gradient tensor
that autograd needs anyway. Shapes: logits [..., vocab] (2-D or 3-D: a 3-D tensor is read one
leading row at a time, so the `[:, :-1]` slice of a model's logits is never copied); results [...].
"""
from __future__ import annotations

from typing import Iterator, Optional

import paddle

# Logits per chunk: at most 1M (4 MiB of float32; 32 rows at a 32k vocabulary, 6 at 152k). Each op
# holds a few chunk-sized temporaries at a time, and small ones are faster too: at 512 x 32k the
# forward took 0.34 s in 512-row chunks and 0.135 s in 32-row ones (64 MiB temporaries are fresh
# memory each time, paid for in page faults; bench/vocab.py).
CHUNK_ELEMENTS = 1 << 20


def _dtype(logits):
    # float64 is kept (gradient checks, references); every other dtype is computed in float32, as the
    # composed `log_softmax(logits.astype("float32"))` these ops replace
    return paddle.float64 if logits.dtype == paddle.float64 else paddle.float32


def _blocks(logits, chunk: Optional[int]) -> Iterator[tuple]:
    """(index into the logits, 2-D view of <= chunk rows) in row order."""
    vocab = logits.shape[-1]
    if logits.ndim == 3:
        rows = logits.shape[1]
        step = chunk or max(1, CHUNK_ELEMENTS // max(vocab, 1))
        for b in range(logits.shape[0]):
            for s in range(0, rows, step):
                yield (b, slice(s, s + step)), _c(logits[b, s:s + step])
    elif logits.ndim == 2:
        step = chunk or max(1, CHUNK_ELEMENTS // max(vocab, 1))
        for s in range(0, logits.shape[0], step):
            yield slice(s, s + step), _c(logits[s:s + step])
    else:
        raise ValueError(f"vocabulary ops take [rows, vocab] or [batch, seq, vocab] logits, not {logits.shape}")


def _lse_parts(x):
    """(logsumexp per row [r, 1], exp(x - row max) [r, V], their sum [r, 1]) of a float chunk."""
    m = x.max(axis=-1, keepdim=True)
    e = paddle.exp(x - m)
    s = e.sum(axis=-1, keepdim=True)
    return m + paddle.log(s), e, s


def _c(x):
    return x if x.is_contiguous() else x.contiguous()


def _flat_index(x, labels):
    """Positions of each row's label in x [r, V] flattened (take_along_axis copies the whole chunk
    here: 0.07 s at 512 x 32k for 512 numbers)."""
    return paddle.arange(x.shape[0], dtype="int64") * x.shape[1] + labels


def _out_shape(logits):
    return logits.shape[:-1]


class _TokenLogprobs(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, logits, labels, chunk):
        dt = _dtype(logits)
        out, lse = paddle.empty(_out_shape(logits), dtype=dt), paddle.empty(_out_shape(logits), dtype=dt)
        for at, block in _blocks(logits, chunk):
            x = block.astype(dt)
            z = _lse_parts(x)[0].squeeze(-1)
            paddle.assign(paddle.gather(x.reshape([-1]), _flat_index(x, labels[at])) - z, out[at])
            paddle.assign(z, lse[at])
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, labels, lse = ctx.saved_tensor()
        dlogits = paddle.empty(logits.shape, dtype=logits.dtype)
        for at, block in _blocks(logits, ctx.chunk):
            # d log p_y / d x_j = [j == y] - p_j
            g = grad[at].unsqueeze(-1)
            d = -paddle.exp(block.astype(lse.dtype) - lse[at].unsqueeze(-1)) * g
            flat, index = d.reshape([-1]), _flat_index(d, labels[at])
            # in place: put_along_axis and scatter_nd_add copy the chunk to add r numbers
            flat.scatter_(index, paddle.gather(flat, index) + grad[at], overwrite=True)
            paddle.assign(d.astype(logits.dtype), dlogits[at])
        return dlogits, None


class _Entropy(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, logits, chunk):
        dt = _dtype(logits)
        out, lse = paddle.empty(_out_shape(logits), dtype=dt), paddle.empty(_out_shape(logits), dtype=dt)
        for at, block in _blocks(logits, chunk):
            x = block.astype(dt)
            z, e, s = _lse_parts(x)
            # H = lse - E_p[x]: no log p per entry
            paddle.assign((z - (e * x).sum(axis=-1, keepdim=True) / s).squeeze(-1), out[at])
            paddle.assign(z.squeeze(-1), lse[at])
        ctx.save_for_backward(logits, lse, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, lse, ent = ctx.saved_tensor()
        dlogits = paddle.empty(logits.shape, dtype=logits.dtype)
        for at, block in _blocks(logits, ctx.chunk):
            # d H / d x_j = -p_j (x_j - E_p[x]), E_p[x] = lse - H
            x = block.astype(lse.dtype)
            z, mean = lse[at].unsqueeze(-1), (lse[at] - ent[at]).unsqueeze(-1)
            d = -paddle.exp(x - z) * (x - mean) * grad[at].unsqueeze(-1)
            paddle.assign(d.astype(logits.dtype), dlogits[at])
        return dlogits


class _KL(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, p_logits, q_logits, chunk):
        dt = _dtype(p_logits)
        out = paddle.empty(_out_shape(p_logits), dtype=dt)
        lse_p, lse_q = paddle.empty_like(out), paddle.empty_like(out)
        q_blocks = _blocks(q_logits, chunk)
        for at, block in _blocks(p_logits, chunk):
            x, y = block.astype(dt), next(q_blocks)[1].astype(dt)
            zp, e, s = _lse_parts(x)
            zq = _lse_parts(y)[0]
            # sum_j p_j (log p_j - log q_j) = E_p[x - y] - (lse_p - lse_q)
            paddle.assign(((e * (x - y)).sum(axis=-1, keepdim=True) / s - (zp - zq)).squeeze(-1), out[at])
            paddle.assign(zp.squeeze(-1), lse_p[at])
            paddle.assign(zq.squeeze(-1), lse_q[at])
        ctx.save_for_backward(p_logits, q_logits, lse_p, lse_q, out)
        ctx.chunk = chunk
        ctx.wants = (not p_logits.stop_gradient, not q_logits.stop_gradient)
        return out

    @staticmethod
    def backward(ctx, grad):
        p_logits, q_logits, lse_p, lse_q, kl = ctx.saved_tensor()
        want_p, want_q = ctx.wants
        dp = paddle.empty(p_logits.shape, dtype=p_logits.dtype) if want_p else None
        dq = paddle.empty(q_logits.shape, dtype=q_logits.dtype) if want_q else None
        q_blocks = _blocks(q_logits, ctx.chunk)
        for at, block in _blocks(p_logits, ctx.chunk):
            x, y = block.astype(lse_p.dtype), next(q_blocks)[1].astype(lse_p.dtype)
            g, zp, zq = grad[at].unsqueeze(-1), lse_p[at].unsqueeze(-1), lse_q[at].unsqueeze(-1)
            p = paddle.exp(x - zp)
            if want_p:  # d KL / d x_j = p_j (log p_j - log q_j - KL)
                d = p * ((x - y) - (zp - zq) - kl[at].unsqueeze(-1)) * g
                paddle.assign(d.astype(p_logits.dtype), dp[at])
            if want_q:  # d KL / d y_j = q_j - p_j
                d = (paddle.exp(y - zq) - p) * g
                paddle.assign(d.astype(q_logits.dtype), dq[at])
        return dp, dq


def token_logprobs(logits, labels, chunk: Optional[int] = None):
    """log p(labels) under softmax(logits): [..., vocab], [...] -> [...]. Differentiable in the logits.
    Every label must be a vocabulary index (mask ignored positions after, as with `where`)."""
    return _TokenLogprobs.apply(logits, labels.astype("int64"), chunk)


def entropy(logits, chunk: Optional[int] = None):
    """Entropy of softmax(logits) per row: [..., vocab] -> [...]. Differentiable."""
    return _Entropy.apply(logits, chunk)


def kl(p_logits, q_logits, chunk: Optional[int] = None):
    """KL(softmax(p_logits) || softmax(q_logits)) per row: [..., vocab] twice -> [...]. Differentiable
    in both. The two must have the same shape."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"kl of logits shaped {p_logits.shape} and {q_logits.shape}")
    return _KL.apply(p_logits, q_logits, chunk)


__all__ = ["CHUNK_ELEMENTS", "token_logprobs", "entropy", "kl"]
