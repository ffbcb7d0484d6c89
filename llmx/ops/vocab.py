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

import functools
import math
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
    step = chunk or max(1, CHUNK_ELEMENTS // max(logits.shape[-1], 1))
    if logits.ndim == 3:
        for b in range(logits.shape[0]):
            for s in range(0, logits.shape[1], step):
                yield (b, slice(s, s + step)), _c(logits[b, s:s + step])
    elif logits.ndim == 2:
        for s in range(0, logits.shape[0], step):
            yield slice(s, s + step), _c(logits[s:s + step])
    else:
        raise ValueError(f"vocabulary ops take [rows, vocab] or [batch, seq, vocab] logits, not {logits.shape}")


@functools.lru_cache(maxsize=None)
def _block(vocab: int) -> int:
    """The divisor of the vocabulary nearest its square root from below (1 when there is none)."""
    return next(b for b in range(math.isqrt(vocab), 0, -1) if vocab % b == 0)


def _row_sum(t):
    """Sum over the last axis [r, V] -> [r, 1], in two stages of ~sqrt(V) terms. Paddle's CPU sum
    adds a row one term after another: over 49,152 exponentials it was off by 1.4e-4 relative (torch:
    2.4e-7); blocks of ~222 bring that to ~1e-6 at the same speed."""
    r, v = t.shape
    b = _block(v)
    if b < 32:  # a vocabulary without a usable divisor: blocks of sqrt(V) and the remainder apart
        b = math.isqrt(v)
        cut = v - v % b
        return t[:, :cut].reshape([r, -1, b]).sum(-1).sum(-1, keepdim=True) + t[:, cut:].sum(-1, keepdim=True)
    return t.reshape([r, -1, b]).sum(-1).sum(-1, keepdim=True)


def _stats(x):
    """Of a float chunk [r, V]: the row max m, log sum exp(x - m), x - m and exp(x - m), ([r, 1] or
    [r, V]). Log-probabilities are formed as (x - m) - log s: both terms are small where p is not, so
    logits of 1e4 keep their precision (m + log s, then x minus that, rounds at 1e4's scale)."""
    m = x.max(axis=-1, keepdim=True)
    xm = x - m
    e = paddle.exp(xm)
    return m, paddle.log(_row_sum(e)), xm, e


def _c(x):
    return x if x.is_contiguous() else x.contiguous()


def _flat_index(x, labels):
    """Positions of each row's label in x [r, V] flattened (take_along_axis copies the whole chunk
    here: 0.07 s at 512 x 32k for 512 numbers)."""
    return paddle.arange(x.shape[0], dtype="int64") * x.shape[1] + labels


def _row_stats(logits):
    """Empty [...] tensors for a result and the saved row max and log sum exp(x - max)."""
    dt = _dtype(logits)
    return tuple(paddle.empty(logits.shape[:-1], dtype=dt) for _ in range(3))


def _grad_by_chunks(logits, chunk, grad_of):
    """The logits-sized gradient, written chunk by chunk: grad_of(at, block) -> that chunk's gradient."""
    dlogits = paddle.empty(logits.shape, dtype=logits.dtype)
    for at, block in _blocks(logits, chunk):
        paddle.assign(grad_of(at, block).astype(logits.dtype), dlogits[at])
    return dlogits


def _put(at, pairs):
    for value, out in pairs:  # [r, 1] or [r] into the [...] results, in place
        paddle.assign(value.reshape([-1]), out[at])


def _logp(block, m, log_s, at):
    """log softmax of one chunk again, from the saved row statistics."""
    return (block.astype(m.dtype) - m[at].unsqueeze(-1)) - log_s[at].unsqueeze(-1)


class _TokenLogprobs(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, logits, labels, chunk):
        out, m, log_s = _row_stats(logits)
        for at, block in _blocks(logits, chunk):
            x = block.astype(out.dtype)
            mx, ls, _, _ = _stats(x)
            picked = paddle.gather(x.reshape([-1]), _flat_index(x, labels[at])).unsqueeze(-1)
            _put(at, [((picked - mx) - ls, out), (mx, m), (ls, log_s)])
        ctx.save_for_backward(logits, labels, m, log_s)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, labels, m, log_s = ctx.saved_tensor()

        def grad_of(at, block):  # d log p_y / d x_j = [j == y] - p_j
            d = -paddle.exp(_logp(block, m, log_s, at)) * grad[at].unsqueeze(-1)
            flat, index = d.reshape([-1]), _flat_index(d, labels[at])
            # in place: put_along_axis and scatter_nd_add copy the chunk to add r numbers
            flat.scatter_(index, paddle.gather(flat, index) + grad[at], overwrite=True)
            return d

        return _grad_by_chunks(logits, ctx.chunk, grad_of), None


class _Entropy(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, logits, chunk):
        out, m, log_s = _row_stats(logits)
        for at, block in _blocks(logits, chunk):
            mx, ls, xm, e = _stats(block.astype(out.dtype))
            # H = -sum p log p = log s - sum e (x - m) / s: no log p per entry, no term of the logits' size
            _put(at, [(ls - _row_sum(e * xm) / paddle.exp(ls), out), (mx, m), (ls, log_s)])
        ctx.save_for_backward(logits, m, log_s, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, m, log_s, ent = ctx.saved_tensor()

        def grad_of(at, block):  # d H / d x_j = -p_j (log p_j + H)
            lp = _logp(block, m, log_s, at)
            return -paddle.exp(lp) * (lp + ent[at].unsqueeze(-1)) * grad[at].unsqueeze(-1)

        return _grad_by_chunks(logits, ctx.chunk, grad_of)


def _log_ratio(x, y, mp, lsp, mq, lsq):
    """log p - log q of one chunk, one association in forward and backward (their rounding then
    cancels in p (log p - log q - KL))."""
    return ((x - mp) - (y - mq)) - (lsp - lsq)


class _KL(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, p_logits, q_logits, chunk):
        out, mp, lsp = _row_stats(p_logits)
        mq, lsq = paddle.empty_like(mp), paddle.empty_like(mp)
        q_blocks = _blocks(q_logits, chunk)
        for at, block in _blocks(p_logits, chunk):
            x, y = block.astype(out.dtype), next(q_blocks)[1].astype(out.dtype)
            m1, l1, _, e = _stats(x)
            m2, l2, _, _ = _stats(y)
            kl = _row_sum(e * _log_ratio(x, y, m1, l1, m2, l2)) / paddle.exp(l1)
            _put(at, [(kl, out), (m1, mp), (l1, lsp), (m2, mq), (l2, lsq)])
        ctx.save_for_backward(p_logits, q_logits, mp, lsp, mq, lsq, out)
        ctx.chunk = chunk
        ctx.wants = (not p_logits.stop_gradient, not q_logits.stop_gradient)
        return out

    @staticmethod
    def backward(ctx, grad):
        p_logits, q_logits, mp, lsp, mq, lsq, kl = ctx.saved_tensor()
        want_p, want_q = ctx.wants
        dp = paddle.empty(p_logits.shape, dtype=p_logits.dtype) if want_p else None
        dq = paddle.empty(q_logits.shape, dtype=q_logits.dtype) if want_q else None
        q_blocks = _blocks(q_logits, ctx.chunk)
        for at, block in _blocks(p_logits, ctx.chunk):
            y_block = next(q_blocks)[1]
            g = grad[at].unsqueeze(-1)
            p = paddle.exp(_logp(block, mp, lsp, at))
            if want_p:  # d KL / d x_j = p_j (log p_j - log q_j - KL)
                x, y = block.astype(mp.dtype), y_block.astype(mp.dtype)
                ratio = _log_ratio(x, y, mp[at].unsqueeze(-1), lsp[at].unsqueeze(-1), mq[at].unsqueeze(-1),
                                   lsq[at].unsqueeze(-1))
                paddle.assign((p * (ratio - kl[at].unsqueeze(-1)) * g).astype(p_logits.dtype), dp[at])
            if want_q:  # d KL / d y_j = q_j - p_j
                d = (paddle.exp(_logp(y_block, mq, lsq, at)) - p) * g
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
