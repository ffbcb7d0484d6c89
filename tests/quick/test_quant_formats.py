"""llmx.quant.formats (numpy only) and stage=quantize's one-line input errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import input_error  # noqa: E402

from llmx.quant import formats as F  # noqa: E402


def test_int4_packing_is_lossless():
    q = np.random.default_rng(0).integers(-8, 8, size=(64, 24)).astype(np.int8)
    p = F.pack_int4(q)
    assert p.dtype == np.uint8 and p.shape == (32, 24)
    np.testing.assert_array_equal(F.unpack_int4(p), q)
    assert p[0, 0] == (int(q[0, 0]) + 8) | ((int(q[1, 0]) + 8) << 4)


def _gptq_row_by_row(w, x, bits, group_size, damp):
    """GPTQ as the paper's Algorithm 1 states it before its lazy batching: after each row, the error update of every
    later row; a group's scales from its rows, error-updated, when it starts (no act-order)."""
    w = w.astype(np.float64).copy()
    h = 2.0 * x.T.astype(np.float64) @ x.astype(np.float64) / len(x)
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    lim = 2 ** (bits - 1) - 1
    q, scales = np.zeros(w.shape, np.int8), np.zeros((len(w) // group_size, w.shape[1]))
    for i in range(len(w)):
        if i % group_size == 0:
            scales[i // group_size] = np.abs(w[i:i + group_size]).max(axis=0) / lim
        s = scales[i // group_size]
        q[i] = np.clip(np.rint(w[i] / s), -lim - 1, lim)
        w[i + 1:] -= np.outer(u[i, i + 1:], (w[i] - q[i] * s) / u[i, i])
    return q, scales


def test_gptq_in_blocks_equals_the_row_by_row_update():
    from llmx.quant.algorithms import gptq

    rng = np.random.default_rng(0)
    for n_in, n_out, group, block in [(96, 40, 32, 48), (200, 30, 100, 64), (64, 8, 16, 128), (130, 17, 130, 48)]:
        w = rng.standard_normal((n_in, n_out)).astype(np.float32)
        x = rng.standard_normal((50, n_in)).astype(np.float32)
        q, scales = gptq(w, x, 4, group, 0.01, False, block=block)
        q_ref, scales_ref = _gptq_row_by_row(w, x, 4, group, 0.01)
        np.testing.assert_array_equal(q, q_ref)
        np.testing.assert_allclose(scales, scales_ref, rtol=1e-6)


def test_rtn_groups_and_e4m3():
    w = np.random.default_rng(1).standard_normal((128, 16)).astype(np.float32)
    q, s = F.rtn(w, 4, 64)
    assert s.shape == (2, 16) and q.min() >= -8 and q.max() <= 7
    np.testing.assert_allclose(s[1], np.abs(w[64:]).max(axis=0) / 7, rtol=1e-6)
    assert np.abs(F.dequantize(q, s) - w).max() <= s.max() / 2 + 1e-6  # round to nearest: at most half a step
    assert F.to_e4m3(np.array([1.0, -2.0, 448.0, 1000.0], np.float32)).tolist() == [0x38, 0xC0, 0x7E, 0x7E]
    assert F.from_e4m3(np.array([0x01], np.uint8))[0] == 2.0 ** -9  # smallest subnormal
    x = np.array([1.06, 1.07, 0.3], np.float32)  # e4m3 steps near 1 are 1/8
    np.testing.assert_allclose(F.fake_e4m3(x), [1.0, 1.125, 0.3125])


def test_quantize_input_errors(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 160}))
    assert input_error("stage=quantize", f"model.name_or_path={model}", "quant=wint4", "quant.group_size=64") == (
        "llmx: config error: quant.group_size=64: must divide the model's intermediate_size (160); "
        "try 64, 128 or -1 (per channel)")
    assert input_error("stage=quantize", f"model.name_or_path={model}").startswith(
        "llmx: config error: quant.algorithm='none': stage=quantize needs a method")
    assert input_error("stage=sft", "quant=gptq_w4").startswith(
        "llmx: config error: quant.algorithm='gptq': only stage=quantize applies a quant config")
    assert input_error("stage=quantize", f"model.name_or_path={model}", "quant=wint8", "parallel=tp2") == (
        "llmx: config error: parallel='dp1 tp2 pp1 sharding1': stage=quantize runs in one process (parallel=single)")
