"""Number formats, numpy only. Weights are paddle's Linear layout [in, out]: a scale per output
column, groups run along the input rows."""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def group_scales(w: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """Symmetric scales [groups, out] (groups = 1 for per-channel): max|w| / qmax."""
    rows = w.shape[0] if group_size <= 0 else group_size
    amax = np.abs(w.reshape(-1, rows, w.shape[1])).max(axis=1)
    return np.maximum(amax, 1e-12) / qmax(bits)


def expand(scales: np.ndarray, rows: int) -> np.ndarray:
    """Scales [groups, out] -> one per weight [in, out]."""
    return np.repeat(scales, rows // scales.shape[0], axis=0)


def quantize(w: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    q = np.rint(w / expand(scales, w.shape[0]))
    return np.clip(q, -qmax(bits) - 1, qmax(bits)).astype(np.int8)


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * expand(scales, q.shape[0])).astype(np.float32)


def rtn(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    s = group_scales(w, bits, group_size)
    return quantize(w, s, bits), s.astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int4 values in [-8, 7], [in, out] with an even `in` -> uint8 [in / 2, out]: row 2k in the low nibble."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(p: np.ndarray) -> np.ndarray:
    out = np.empty((p.shape[0] * 2, p.shape[1]), dtype=np.int8)
    out[0::2] = (p & 0x0F).astype(np.int8) - 8
    out[1::2] = (p >> 4).astype(np.int8) - 8
    return out


def _e4m3_table() -> np.ndarray:
    """The value of every e4m3fn byte (OCP FP8: bias 7, no infinities, 0x7F/0xFF are NaN)."""
    vals = np.empty(256, dtype=np.float32)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e, m = (b >> 3) & 0xF, b & 0x7
        if e == 0xF and m == 0x7:
            vals[b] = np.nan
        elif e == 0:
            vals[b] = sign * (m / 8) * 2.0 ** -6
        else:
            vals[b] = sign * (1 + m / 8) * 2.0 ** (e - 7)
    return vals


E4M3 = _e4m3_table()
_POS = E4M3[:0x7F]  # 0 .. 448, increasing


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """float -> e4m3 bytes, round to nearest (saturating at +-448)."""
    a = np.clip(np.abs(x), 0, E4M3_MAX).ravel()
    i = np.clip(np.searchsorted(_POS, a), 1, len(_POS) - 1)
    lo, hi = _POS[i - 1], _POS[i]
    idx = np.where(a - lo <= hi - a, i - 1, i).astype(np.uint8)
    return (idx | (np.signbit(x.ravel()).astype(np.uint8) << 7)).reshape(x.shape)


def from_e4m3(b: np.ndarray) -> np.ndarray:
    return E4M3[b]


def fake_e4m3(x: np.ndarray) -> np.ndarray:
    return from_e4m3(to_e4m3(x))
