"""llmx.ops.vocab (token log-probabilities, entropy, KL over the vocabulary) against torch's
`log_softmax` and Paddle's composed `log_softmax`: values and gradients, float32 and float64, 2-D
and 3-D logits, chunks that do not divide the rows, magnitudes of 1e4, a strided slice of a model's
logits, and a real vocabulary (49,152) that Paddle's own CPU log_softmax would take a minute on."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _data(shape, scale=3.0, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    y = (rng.standard_normal(shape) * scale).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    g = rng.standard_normal(shape[:-1]).astype(dtype)  # the gradient handed back to each op's output
    return x, y, labels, g


# --- the references: what the ops replace, in torch and in paddle ---------------------------------

def _torch(kind, x, y, labels, g):
    """(values, gradient wrt x, gradient wrt y or None) from torch.log_softmax, in float64 whatever the
    inputs' dtype: the exact answer to hold float32 to (torch's own float32 log_softmax is off by up to
    1e-4 in the KL's gradient at a 49k vocabulary, 10x more than these ops)."""
    tx = torch.tensor(x.astype("float64"), requires_grad=True)
    ty = torch.tensor(y.astype("float64"), requires_grad=True)
    lp = torch.log_softmax(tx, -1)
    if kind == "logprobs":
        out = lp.gather(-1, torch.tensor(labels).unsqueeze(-1)).squeeze(-1)
    elif kind == "entropy":
        out = -(lp.exp() * lp).sum(-1)
    else:
        lq = torch.log_softmax(ty, -1)
        out = (lp.exp() * (lp - lq)).sum(-1)
    (out * torch.tensor(g.astype("float64"))).sum().backward()
    return out.detach().numpy(), tx.grad.numpy(), (ty.grad.numpy() if ty.grad is not None else None)


def _paddle(kind, x, y, labels, g, fn):
    """(values, gradient wrt x, gradient wrt y or None) of fn(kind) on paddle tensors."""
    import paddle

    tx = paddle.to_tensor(x, stop_gradient=False)
    ty = paddle.to_tensor(y, stop_gradient=False)
    out = fn(kind, tx, ty, paddle.to_tensor(labels))
    inputs = [tx, ty] if kind == "kl" else [tx]
    grads = paddle.grad((out * paddle.to_tensor(g)).sum(), inputs)
    return out.numpy(), grads[0].numpy(), (grads[1].numpy() if kind == "kl" else None)


def _composed(kind, x, y, labels):
    import paddle
    import paddle.nn.functional as F

    lp = F.log_softmax(x, axis=-1)
    if kind == "logprobs":
        return paddle.take_along_axis(lp, labels.unsqueeze(-1), axis=-1).squeeze(-1)
    if kind == "entropy":
        return -(lp.exp() * lp).sum(-1)
    lq = F.log_softmax(y, axis=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _op(chunk=None):
    from llmx.ops import vocab

    def run(kind, x, y, labels):
        if kind == "logprobs":
            return vocab.token_logprobs(x, labels, chunk=chunk)
        if kind == "entropy":
            return vocab.entropy(x, chunk=chunk)
        return vocab.kl(x, y, chunk=chunk)

    return run


def _close(got, want, dtype, magnitude):
    """Float64 to 1e-12; float32 to 1e-6 relative plus a few units in the last place of the largest
    logit (x - logsumexp(x) and E_p[x] round at that scale, whoever computes them)."""
    eps = np.finfo(dtype).eps
    for a, b in zip(got, want):
        if b is None:
            assert a is None
            continue
        np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == "float64" else 1e-6, atol=8 * eps * max(magnitude, 1.0))


KINDS = ("logprobs", "entropy", "kl")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("shape,chunk", [((13, 37), 1), ((13, 37), 5), ((3, 7, 101), 4), ((2, 5, 64), None)])
def test_equals_torch_and_paddle_log_softmax(kind, dtype, shape, chunk):
    x, y, labels, g = _data(shape, dtype=dtype)
    got = _paddle(kind, x, y, labels, g, _op(chunk))
    big = max(np.abs(x).max(), np.abs(y).max())
    _close(got, _torch(kind, x, y, labels, g), dtype, big)
    _close(got, _paddle(kind, x, y, labels, g, _composed), dtype, big)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_extreme_magnitudes(kind, dtype):
    """Logits of +-1e4 (finite): nearly one-hot rows, log-probabilities down to -4e4."""
    x, y, labels, g = _data((4, 9, 203), scale=1e4, seed=3, dtype=dtype)
    x[0, 0] = 1e4  # a row of ties
    got = _paddle(kind, x, y, labels, g, _op(chunk=7))
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    _close(got, _torch(kind, x, y, labels, g), dtype, max(np.abs(x).max(), np.abs(y).max()))


def test_default_chunks_span_rows_and_a_strided_slice_is_read_in_place(monkeypatch):
    """With the element budget forced below a row's worth of several rows, the default chunking cuts
    across rows of a [batch, seq, vocab] tensor; a `[:, :-1]` view (how the RL losses slice a model's
    logits) gives what the same values copied give."""
    import paddle

    from llmx.ops import vocab

    monkeypatch.setattr(vocab, "CHUNK_ELEMENTS", 3 * 50 + 7)  # 3 rows of 50 per chunk
    x, y, labels, g = _data((3, 11, 50), seed=5)
    full = paddle.to_tensor(x)
    view = full[:, :-1]
    copied = paddle.to_tensor(np.ascontiguousarray(x[:, :-1]))
    lab = paddle.to_tensor(labels[:, :-1])
    np.testing.assert_array_equal(vocab.token_logprobs(view, lab).numpy(), vocab.token_logprobs(copied, lab).numpy())
    want = _torch("logprobs", x[:, :-1], y[:, :-1], labels[:, :-1], g[:, :-1])
    _close(_paddle("logprobs", x[:, :-1], y[:, :-1], labels[:, :-1], g[:, :-1], _op()), want, "float32", np.abs(x).max())


def test_kl_gradient_only_where_asked():
    """KL against a fixed reference (stop_gradient): only the policy's logits get a gradient."""
    import paddle

    from llmx.ops import vocab

    x, y, _, g = _data((6, 31), seed=7, dtype="float64")
    tx, ty = paddle.to_tensor(x, stop_gradient=False), paddle.to_tensor(y)
    (vocab.kl(tx, ty, chunk=4) * paddle.to_tensor(g)).sum().backward()
    assert ty.grad is None
    np.testing.assert_allclose(tx.grad.numpy(), _torch("kl", x, y, np.zeros(6, "int64"), g)[1], rtol=1e-12, atol=1e-14)


def test_bfloat16_logits_are_computed_in_float32():
    """As the composed `log_softmax(logits.astype("float32"))` did: float32 results, a bf16 gradient."""
    import paddle

    from llmx.ops import vocab

    x, _, labels, _ = _data((5, 40), seed=9)
    t = paddle.to_tensor(x).astype("bfloat16")
    t.stop_gradient = False
    out = vocab.token_logprobs(t, paddle.to_tensor(labels), chunk=2)
    assert out.dtype == paddle.float32
    want = torch.log_softmax(torch.tensor(x).bfloat16().float(), -1).gather(-1, torch.tensor(labels)[:, None])[:, 0]
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-6, atol=1e-5)
    out.sum().backward()
    assert t.grad.dtype == paddle.bfloat16


def test_real_vocabulary():
    """SmolLM2's vocabulary (49,152) over 2 x 40 positions, forward and backward, against torch
    (Paddle's CPU log_softmax needs ~16 s per 64 such rows; these ops read each logit a few times)."""
    x, y, labels, g = _data((2, 40, 49152), scale=4.0, seed=11)
    for kind in KINDS:
        _close(_paddle(kind, x, y, labels, g, _op()), _torch(kind, x, y, labels, g), "float32",
               max(np.abs(x).max(), np.abs(y).max()))
