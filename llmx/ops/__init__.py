"""llmx's fused ops: one Python entry per op. Each runs the C++ kernel of csrc/ when the kernels
are loaded (llmx.ops.build compiles them on first use into a cache) and Paddle's composed ops
(llmx.ops.composed) otherwise.

Modes (`model.fused_ops`): `off` never loads kernels; `on` must load them (configure() raises
BuildError with the reason); `auto` tries, and on failure logs once and falls back.
`used()` names the ops whose kernels ran in this process (recorded in summary.json).
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

with warnings.catch_warnings():  # paddle's first import warns "No ccache found" (a hint for Paddle's own developers)
    warnings.simplefilter("ignore")
    import paddle

from llmx.loss_chunks import ce_chunk_rows
from llmx.ops import composed
from llmx.ops import build as _build
from llmx.ops.build import OPS, BuildError

log = logging.getLogger(__name__)
MODES = ("auto", "on", "off")
_state = {"mode": None, "module": None, "error": None}
_used: set = set()


def configure(mode: str = "auto") -> bool:
    """Set the mode; returns whether the kernels are loaded. `on` raises BuildError when they cannot be."""
    if mode not in MODES:
        raise ValueError(f"fused ops mode {mode!r}: allowed {', '.join(MODES)}")
    _state["mode"] = mode
    if mode == "off":
        return False
    if _state["module"] is None and (_state["error"] is None or mode == "on"):
        try:
            _state["module"] = _build.build()
            _state["error"] = None
        except BuildError as e:
            _state["error"] = str(e)
            if mode == "on":
                raise
            log.warning("fused ops: kernels unavailable, using Paddle's composed ops: %s", e)
    elif _state["error"] is not None and mode == "on":
        raise BuildError(_state["error"])
    return _state["module"] is not None


def kernels():
    """The loaded kernel module, or None (off, or the build failed). First use in auto mode builds."""
    if _state["mode"] is None:
        configure("auto")
    return _state["module"] if _state["mode"] != "off" else None


def mode() -> Optional[str]:
    """The mode configure() last set (None: never configured)."""
    return _state["mode"]


def error() -> Optional[str]:
    return _state["error"]


def used() -> list:
    return sorted(_used)


def reset_used() -> None:
    _used.clear()




def _c(x):
    return x if x.is_contiguous() else x.contiguous()


def _kernel(name: str, *tensors):
    """The kernel module when `name`'s kernel can take these tensors (CPU float32/64; GPU float32
    for the ops with CUDA kernels, when they were built), else None."""
    k = kernels()
    if k is None:
        return None
    if any(t.place.is_gpu_place() for t in tensors):
        if name not in _build.GPU_OPS or not _build.gpu_build() or any(t.dtype != paddle.float32 for t in tensors):
            return None
    elif any(t.dtype not in (paddle.float32, paddle.float64) for t in tensors):
        return None
    _used.add(name)
    return k


def rms_norm(x, weight, eps: float = 1e-6):
    """weight * x / sqrt(mean(x^2, last axis) + eps)."""
    k = _kernel("rms_norm", x, weight)
    return k.llmx_rms_norm(_c(x), _c(weight), float(eps)) if k else composed.rms_norm(x, weight, eps)


def add_rms_norm(x, residual, weight, eps: float = 1e-6):
    """(rms_norm(x + residual), x + residual)."""
    k = _kernel("add_rms_norm", x, residual, weight)
    if not k:
        return composed.add_rms_norm(x, residual, weight, eps)
    y, h = k.llmx_add_rms_norm(_c(x), _c(residual), _c(weight), float(eps))
    return y, h


def rope(q, k, cos, sin):
    """Rotary embedding ("rotate half") of q [b, s, heads, d] and k [b, s, kv_heads, d];
    cos/sin [1 or b, s, d] (gathered by position already). Returns the rotated (q, k): the
    kernel rotates q and k in place (a leaf that takes a gradient is copied first, as autograd
    requires), so the caller must use what this returns and not read the q and k it passed."""
    kern = _kernel("rope", q, k, cos, sin)
    if not kern:
        return composed.rope(q, k, cos, sin)
    q, k = (x.clone() if x.is_leaf and not x.stop_gradient else _c(x) for x in (q, k))
    # the returned tensors share q's and k's memory but carry the op's autograd node
    qo, ko = kern.llmx_rope(q, k, _c(cos.astype(q.dtype)), _c(sin.astype(q.dtype)))
    return qo, ko


def swiglu(gate, up=None):
    """silu(gate) * up; with `up` None, gate holds [gate, up] halves on its last axis."""
    if up is None:
        gate, up = paddle.chunk(gate, 2, axis=-1)
    k = _kernel("swiglu", gate, up)
    return k.llmx_swiglu(_c(gate), _c(up)) if k else composed.swiglu(gate, up)


def _softmax_ce_(kern, logits, labels, ignore_index):
    """Per-row losses of one chunk; the chunk's logits are overwritten by their gradient."""
    loss = paddle.empty([logits.shape[0]], dtype=logits.dtype)
    kern.llmx_softmax_ce(logits, labels, loss, int(ignore_index))
    return loss


class _FusedLinearCE(paddle.autograd.PyLayer):
    """Forward computes the loss and both gradients chunk by chunk (the full [tokens, vocab]
    logits never exist); backward only scales the stored gradients by the incoming one."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, kern, ignore_index, transpose_weight, chunk):
        n = hidden.shape[0]
        want_w = not weight.stop_gradient
        dw = paddle.zeros_like(weight) if want_w else None
        dh, total = [], paddle.zeros([], dtype=hidden.dtype)
        for s in range(0, n, chunk):
            h = hidden[s:s + chunk]
            g = paddle.matmul(h, weight, transpose_y=transpose_weight)
            total = total + _softmax_ce_(kern, g, labels[s:s + chunk], ignore_index).sum()
            dh.append(paddle.matmul(g, weight, transpose_y=not transpose_weight))
            if want_w:  # d loss / d weight (+= in place): h^T g for [hidden, vocab], g^T h for a tied [vocab, hidden]
                kern.llmx_gemm_tn_acc(dw, g, h) if transpose_weight else kern.llmx_gemm_tn_acc(dw, h, g)
            del g  # before the next chunk's logits exist: one chunk at a time
        ctx.save_for_backward(paddle.concat(dh) if dh else paddle.zeros_like(hidden), dw)
        return total

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.saved_tensor()
        # in place: a second [hidden, vocab] tensor would double the weight gradient's memory
        return dh.multiply_(dloss), (dw.multiply_(dloss) if dw is not None else None), None


def fused_linear_cross_entropy(hidden, weight, labels, ignore_index: int = -100, transpose_weight: bool = False,
                               reduction: str = "mean", chunk: Optional[int] = None):
    """Cross-entropy of `hidden @ weight` (weight [hidden, vocab], or [vocab, hidden] with
    transpose_weight) against `labels`, positions labelled `ignore_index` left out; mean over
    the counted positions or their sum. hidden [..., h], labels [...].

    The kernel path never computes the logits of ignored positions (an SFT prompt, padding): the
    counted rows are gathered first, so the three vocabulary-sized matmuls shrink with them."""
    hidden2 = hidden.reshape([-1, hidden.shape[-1]])
    labels1 = labels.reshape([-1]).astype("int64")
    k = _kernel("fused_linear_cross_entropy", hidden2, weight)
    counted = labels1 != ignore_index if k else None
    n_counted = int(counted.sum()) if k else 0
    if n_counted == 0:  # no kernel, or nothing to count
        return composed.fused_linear_cross_entropy(hidden2, weight, labels1, ignore_index, transpose_weight, reduction)
    if n_counted < labels1.shape[0]:
        keep = paddle.nonzero(counted).flatten()
        hidden2, labels1 = paddle.index_select(hidden2, keep), paddle.gather(labels1, keep)
    vocab = weight.shape[0] if transpose_weight else weight.shape[1]
    chunk = chunk or ce_chunk_rows(hidden2.shape[0], vocab)
    if paddle.is_grad_enabled() and not (hidden2.stop_gradient and weight.stop_gradient):
        total = _FusedLinearCE.apply(_c(hidden2), _c(weight), labels1, k, ignore_index, transpose_weight, chunk)
    else:  # evaluation: the loss chunk by chunk, no gradients
        total = paddle.zeros([], dtype=hidden2.dtype)
        for s in range(0, hidden2.shape[0], chunk):
            logits = paddle.matmul(hidden2[s:s + chunk], weight, transpose_y=transpose_weight)
            total = total + _softmax_ce_(k, logits, labels1[s:s + chunk], ignore_index).sum()
    return total if reduction == "sum" else total / n_counted


def packed_attention(q, k, v, seg, scale: Optional[float] = None):
    """Causal attention inside each packed example: q [b, s, heads, d], k/v [b, s, kv_heads, d],
    seg [b, s] the example id of each position (contiguous runs). Returns [b, s, heads, d]."""
    scale = float(scale if scale is not None else q.shape[-1] ** -0.5)
    kern = _kernel("packed_attention", q, k, v)
    if not kern:
        return composed.packed_attention(q, k, v, seg, scale)
    out, _ = kern.llmx_packed_attention(_c(q), _c(k), _c(v), _c(seg.astype("int64")), scale)
    return out


__all__ = ["OPS", "BuildError", "configure", "kernels", "used", "error", "rms_norm", "add_rms_norm", "rope", "swiglu",
           "fused_linear_cross_entropy", "packed_attention"]
