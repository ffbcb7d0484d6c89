"""Per-layer quantization algorithms on numpy arrays: W is [in, out] (y = x W), X the calibration
inputs [tokens, in]. Each returns what the checkpoint stores for the layer."""
from __future__ import annotations

import numpy as np

from llmx.quant import formats as F


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    d = x @ (w - w_hat)
    return float(np.mean(d * d))


def gptq(w: np.ndarray, x: np.ndarray, bits: int, group_size: int, damp: float, act_order: bool,
         block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al. 2022): quantize input rows one by one, spreading each row's error over
    the rows not yet quantized through the inverse Hessian's Cholesky factor (H = 2 X^T X / n).
    With act_order rows go in decreasing diag(H) order and group scales are fixed up front from the
    float weights (static groups), so groups stay contiguous in the original order.
    The paper's lazy batch updates: a row's error reaches the rows of its own block at once and the
    rows after the block in one matrix product per block (the same sums, grouped; updating every later row
    after each row was memory-bound: stage=quantize's GPTQ test on SmolLM2-135M took 74 s with it, 43 s in
    blocks). A group's scales are read from its rows when it starts, so blocks hold whole groups."""
    w = w.astype(np.float64).copy()
    n_in = w.shape[0]
    h = 2.0 * (x.T.astype(np.float64) @ x.astype(np.float64)) / max(len(x), 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(n_in)
    g = n_in if group_size <= 0 else group_size
    static = F.group_scales(w, bits, group_size) if act_order else None
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n_in)
    w, h = w[perm], h[np.ix_(perm, perm)]
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: inv(H) = U^T U
    q = np.zeros_like(w, dtype=np.int8)
    scales = np.zeros((n_in // g, w.shape[1]))
    lim = F.qmax(bits)
    if static is None and g < n_in:  # a group's rows must be up to date when it starts: whole groups per block
        block = g * max(1, block // g)
    for b0 in range(0, n_in, block):
        b1 = min(b0 + block, n_in)
        errs = np.empty((b1 - b0, w.shape[1]))
        for i in range(b0, b1):
            row = perm[i]
            grp = row // g
            if static is not None:
                s = static[grp]
            else:
                if row % g == 0:  # the group starts here: scales from the (error-updated) weights of its rows
                    scales[grp] = np.maximum(np.abs(w[i:i + g]).max(axis=0), 1e-12) / lim
                s = scales[grp]
            qi = np.clip(np.rint(w[i] / s), -lim - 1, lim)
            q[i] = qi
            errs[i - b0] = err = (w[i] - qi * s) / u[i, i]
            w[i + 1:b1] -= np.outer(u[i, i + 1:b1], err)
        w[b1:] -= u[b0:b1, b1:].T @ errs
    if static is not None:
        scales = static
    out = np.empty_like(q)
    out[perm] = q
    return out, scales.astype(np.float32)


def awq(w: np.ndarray, x: np.ndarray, bits: int, group_size: int, grid: int, clip: bool):
    """AWQ (Lin et al. 2023): scale input channel j by s_j = mean|x_j|^a (a searched on a grid for the
    least output error), quantize W * s and divide by s again (on dequantization, where a kernel
    would fold 1/s into the previous op). With clip, each group's range is shrunk by the ratio that
    minimizes the output error. Returns (q, scales, s)."""
    act = np.abs(x).mean(axis=0).astype(np.float64) + 1e-8
    best = (np.inf, None)
    for a in np.linspace(0, 1, grid + 1):
        s = act ** a
        s = s / np.sqrt(s.max() * s.min())
        ws = w * s[:, None]
        q, sc = F.rtn(ws, bits, group_size)
        err = output_error(x, w, F.dequantize(q, sc) / s[:, None])
        if err < best[0]:
            best = (err, s)
    s = best[1]
    ws = w * s[:, None]
    sc = F.group_scales(ws, bits, group_size)
    if clip:  # one shrink ratio per layer, searched on the output error
        errs = []
        for r in np.linspace(0.7, 1.0, 7):
            q = F.quantize(ws, sc * r, bits)
            errs.append((output_error(x, w, F.dequantize(q, sc * r) / s[:, None]), r))
        sc = sc * min(errs)[1]
    return F.quantize(ws, sc, bits), sc.astype(np.float32), s.astype(np.float32)


def fake_per_token_int8(x: np.ndarray) -> np.ndarray:
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-12) / 127.0
    return np.clip(np.rint(x / s), -128, 127) * s


def smoothquant(w: np.ndarray, x: np.ndarray, alphas: list[float], smooth: bool):
    """SmoothQuant (Xiao et al. 2022): s_j = max|x_j|^a / max|W_j|^(1-a); activations x / s are
    quantized per token at run time, weights s W per output channel (int8). The alpha with the least
    output error (with both quantized) on the calibration inputs wins, no smoothing (s = 1) being one
    candidate, so no layer ends up worse than naive W8A8 on its calibration inputs; smooth=False is
    naive W8A8. Returns (q, scales, s, alpha) (alpha None: not smoothed)."""
    xa = np.maximum(np.abs(x).max(axis=0), 1e-8).astype(np.float64)
    wa = np.maximum(np.abs(w).max(axis=1), 1e-8).astype(np.float64)
    ref = x @ w
    best = None
    for a in ([*alphas, None] if smooth else [None]):
        s = np.ones_like(xa) if a is None else xa ** a / wa ** (1 - a)
        q, sc = F.rtn(w * s[:, None], 8, -1)
        y = fake_per_token_int8(x / s) @ F.dequantize(q, sc)
        err = float(np.mean((y - ref) ** 2))
        if best is None or err < best[0]:
            best = (err, q, sc, s, a)
    return best[1], best[2], best[3].astype(np.float32), best[4]


def fp8_weight(w: np.ndarray, per_channel: bool):
    amax = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max(keepdims=True).reshape(1, 1)
    sc = np.maximum(amax, 1e-12) / F.E4M3_MAX
    return F.to_e4m3(w / sc), np.broadcast_to(sc, (1, w.shape[1])).astype(np.float32).copy()
