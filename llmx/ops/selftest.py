"""One small forward + backward check per op: kernel against Paddle's composed ops (`python -m llmx.ops check`)."""
from __future__ import annotations

import numpy as np
import paddle

from llmx.ops import composed


def _rand(*shape, seed=0):
    t = paddle.to_tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))
    t.stop_gradient = False
    return t


def _cases(ops):
    angle = paddle.to_tensor(np.random.default_rng(5).uniform(0, 6, (1, 9, 6)).astype("float32"))
    labels = paddle.to_tensor(np.array([3, -100, 0, 20, 7, 1, -100], dtype="int64"))
    seg = paddle.to_tensor(np.array([[0, 0, 0, 1, 1, 2, 2, 2, 3]], dtype="int64"))
    return {
        "rms_norm": ((lambda x, w: ops.rms_norm(x, w, 1e-6)), (lambda x, w: composed.rms_norm(x, w, 1e-6)),
                     [_rand(5, 37), _rand(37, seed=1)]),
        "add_rms_norm": ((lambda x, r, w: ops.add_rms_norm(x, r, w, 1e-6)),
                         (lambda x, r, w: composed.add_rms_norm(x, r, w, 1e-6)), [_rand(5, 37), _rand(5, 37, seed=2),
                                                                                  _rand(37, seed=1)]),
        "rope": ((lambda q, k: ops.rope(q, k, angle.cos(), angle.sin())),
                 (lambda q, k: composed.rope(q, k, angle.cos(), angle.sin())), [_rand(2, 9, 3, 6), _rand(2, 9, 1, 6)]),
        "swiglu": (ops.swiglu, composed.swiglu, [_rand(3, 19), _rand(3, 19, seed=3)]),
        "fused_linear_cross_entropy": ((lambda h, w: ops.fused_linear_cross_entropy(h, w, labels, chunk=3)),
                                       (lambda h, w: composed.fused_linear_cross_entropy(h, w, labels)),
                                       [_rand(7, 11), _rand(11, 29, seed=4)]),
        "packed_attention": ((lambda q, k, v: ops.packed_attention(q, k, v, seg)),
                             (lambda q, k, v: composed.packed_attention(q, k, v, seg, 8 ** -0.5)),
                             [_rand(1, 9, 2, 8), _rand(1, 9, 1, 8, seed=6), _rand(1, 9, 1, 8, seed=7)]),
    }


def _outputs_and_grads(fn, inputs):
    for t in inputs:
        t.clear_gradient()
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    total = sum((o * (i + 1)).sum() for i, o in enumerate(outs))
    return [o.numpy() for o in outs] + [g.numpy() for g in paddle.grad(total, inputs)]


def run(ops) -> dict:
    """{op: max abs difference of outputs and gradients, kernel vs composed}."""
    result = {}
    for name, (fused, reference, inputs) in _cases(ops).items():
        a, b = _outputs_and_grads(fused, inputs), _outputs_and_grads(reference, inputs)
        result[name] = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    return result
