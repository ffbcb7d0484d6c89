"""Which GGML type each tensor of an exported GGUF gets, and the two block quantizers the `gguf` package lacks.

`stage.gguf_type` names a whole-file type as llama.cpp's `llama-quantize` does; like it, llmx keeps 1-D
tensors (norms, biases) in F32 and gives some matrices more bits (`tensor_type`). The `gguf` package
(0.19) quantizes F16, BF16, Q8_0, Q4_0, Q5_0 and friends itself (`gguf.quants.quantize`), but only
*dequantizes* the k-quants: Q4_K and Q6_K, which q4_k_m needs, are written here in numpy from their
published block layouts (ggml's block_q4_K / block_q6_K, as the package's own dequantizers read them),
and tests/runs/test_gguf_export.py reads them back with the package's dequantize. They take each
sub-block's scale from its range in one pass (no search over scales, unlike llama.cpp's), so their error
is at most about one quantization step of the sub-block, a little above llama.cpp's.
"""
from __future__ import annotations

import numpy as np

# stage.gguf_type -> (gguf.LlamaFileType member, the GGML type most matrices get)
FILE_TYPES = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "bf16": ("MOSTLY_BF16", "BF16"),
              "q8_0": ("MOSTLY_Q8_0", "Q8_0"), "q4_0": ("MOSTLY_Q4_0", "Q4_0"), "q4_k_m": ("MOSTLY_Q4_K_M", "Q4_K")}
QK_K = 256
# A k-quant needs rows of whole 256-blocks; llama.cpp falls back to these for rows that are not (same bits/weight)
_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third in between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(gguf_name: str, shape, gguf_type: str, layers: int) -> str:
    """The GGML type (a gguf.GGMLQuantizationType name) of tensor `gguf_name` (shape as numpy's) in a file
    of `gguf_type`. As llama-quantize: vectors F32; the output head Q6_K in the 4-bit files; q4_k_m's
    attn_v and ffn_down Q6_K in the layers _more_bits picks, everything else Q4_K; a matrix whose rows
    do not fill the type's blocks falls back (k-quants as llama.cpp does, the 32-blocks to F16)."""
    import gguf

    base = FILE_TYPES[gguf_type][1]
    if len(shape) < 2 or base == "F32":
        return "F32"
    kind = base
    if gguf_name == "output.weight" and gguf_type in ("q4_0", "q4_k_m"):
        kind = "Q6_K"
    elif gguf_type == "q4_k_m" and gguf_name.endswith(("attn_v.weight", "ffn_down.weight")):
        layer = int(gguf_name.split(".")[1])
        kind = "Q6_K" if _more_bits(layer, layers) else "Q4_K"
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]][0]
    if shape[-1] % block:
        kind = _FALLBACK.get(kind, "F16")
        if shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]][0]:
            kind = "F16"
    return kind


def quantize(array: np.ndarray, kind: str) -> np.ndarray:
    """`array` (float32, rows along the last axis) as GGML type `kind`: plain floats for F32/F16, else the
    packed bytes GGUFWriter.add_tensor takes with `raw_dtype`."""
    import gguf

    if kind == "F32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if kind == "F16":
        return np.ascontiguousarray(array, dtype=np.float16)
    if kind == "Q4_K":
        return _blocks(array, _q4_k_blocks, 144)
    if kind == "Q6_K":
        return _blocks(array, _q6_k_blocks, 210)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType[kind])


def _blocks(array: np.ndarray, quantize_blocks, block_bytes: int) -> np.ndarray:
    rows = np.ascontiguousarray(array, dtype=np.float32)
    packed = quantize_blocks(rows.reshape(-1, QK_K))
    return packed.reshape(*rows.shape[:-1], rows.shape[-1] // QK_K * block_bytes)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, dtype=np.float32), where=b != 0)


def _q4_k_blocks(x: np.ndarray) -> np.ndarray:
    """block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) for 8 sub-blocks of 32, 128 bytes of nibbles.
    A weight is d*scale*q - dmin*min, q in 0..15."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)  # the offset is subtracted: never positive, as in ggml
    step = (sub.max(axis=-1) - lo) / 15.0
    d = _f16(step.max(axis=-1) / 63.0)
    dmin = _f16(-lo.min(axis=-1) / 63.0)
    sc = np.clip(np.rint(_safe_div(step, d.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(_safe_div(-lo, dmin.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    scale = d.astype(np.float32)[:, None] * sc  # what the reader multiplies by, after rounding
    offset = dmin.astype(np.float32)[:, None] * mn
    q = np.clip(np.rint(_safe_div(sub + offset[..., None], scale[..., None])), 0, 15).astype(np.uint8)
    packed = np.empty((n, 12), dtype=np.uint8)  # sub-blocks 0-3 in the low 6 bits, 4-7 split over the rest
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    qs = q.reshape(n, 4, 2, 32)  # each 32 bytes: sub-block 2g in the low nibbles, 2g+1 in the high
    qs = qs[:, :, 0] | (qs[:, :, 1] << 4)
    return np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), packed,
                           qs.reshape(n, 128)], axis=1)


def _q6_k_blocks(x: np.ndarray) -> np.ndarray:
    """block_q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales (sub-blocks of 16), f16 d.
    A weight is d*scale*(q - 32), q in 0..63."""
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    step = np.abs(sub).max(axis=-1) / 31.0
    d = _f16(step.max(axis=-1) / 127.0)
    sc = np.clip(np.rint(_safe_div(step, d.astype(np.float32)[:, None])), -128, 127).astype(np.int8)
    scale = d.astype(np.float32)[:, None] * sc
    q = (np.clip(np.rint(_safe_div(sub, scale[..., None])), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    low, high = q & 0x0F, q >> 4
    ql = low[:, :, :64] | (low[:, :, 64:] << 4)  # per half of 128: values i and 64+i share a byte
    hi = high.reshape(n, 2, 4, 32)  # per half: value 32s+i in bits 2s..2s+1 of byte i
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8),
                           d.reshape(n, 1).view(np.uint8)], axis=1)
