"""Calibrate, quantize every Linear of the decoder layers, measure (paddle + numpy).

Calibration runs the float model once over the calibration examples and records each target
layer's inputs (all layers quantized from the float model's activations, not sequentially). The
embeddings, norms and the LM head stay float.
"""
from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np

from llmx.quant import formats as F
from llmx.quant import algorithms as A

# algorithm -> (weight format, bits, activation emulation)
SPECS = {
    "wint8": ("int8", 8, "none"),
    "wint4": ("int4", 4, "none"),
    "gptq": ("int4", 4, "none"),
    "awq": ("int4", 4, "none"),
    "a8w8": ("int8", 8, "int8_per_token"),
    "a8w8c8": ("int8", 8, "int8_per_token"),
    "fp8": ("e4m3", 8, "e4m3_per_tensor"),
}
MAX_ROWS = 4096  # calibration tokens kept per layer
_IN_NUMBERED_LAYER = re.compile(r"\.\d+\.")


def targets(model, include_head: bool = False) -> list[tuple[str, object]]:
    """The decoder layers' Linears (and with include_head the LM head, a [hidden, vocab] matmul too). A decoder
    layer is an entry of a numbered layer list, whatever the family calls it (`layers.3`, Bloom's and QWen's
    `h.3`, ChatGLM's `encoder.layers.3`)."""
    import paddle

    return [(n, l) for n, l in model.named_sublayers()
            if (isinstance(l, paddle.nn.Linear) and _IN_NUMBERED_LAYER.search(n))
            or (include_head and n == "lm_head" and len(getattr(l, "weight", paddle.zeros([1])).shape) == 2)]


def calibrate(model, batches: list, kv: bool, progress: Callable, include_head: bool = False) -> tuple[dict, dict]:
    """Inputs [tokens, in] of every target layer; with kv, the abs max of k/v projection outputs per feature."""
    import paddle

    xs: dict[str, list] = {}
    kv_amax: dict[str, np.ndarray] = {}
    handles = []
    for name, layer in targets(model, include_head):
        def pre(l, inputs, name=name):
            a = inputs[0].astype("float32").numpy().reshape(-1, inputs[0].shape[-1])
            xs.setdefault(name, []).append(a)
        handles.append(layer.register_forward_pre_hook(pre))
        if kv and name.endswith(("k_proj", "v_proj")):
            def post(l, inputs, out, name=name):
                a = np.abs(out.astype("float32").numpy()).reshape(-1, out.shape[-1]).max(axis=0)
                kv_amax[name] = np.maximum(kv_amax.get(name, 0), a)
            handles.append(layer.register_forward_post_hook(post))
    model.eval()
    with paddle.no_grad():
        for ids in progress(len(batches), batches):
            model(input_ids=paddle.to_tensor([ids]))
    for h in handles:
        h.remove()
    rng = np.random.default_rng(0)
    out = {}
    for name, parts in xs.items():
        x = np.concatenate(parts)
        out[name] = x[rng.choice(len(x), MAX_ROWS, replace=False)] if len(x) > MAX_ROWS else x
    return out, kv_amax


def quantize_layer(algorithm: str, w: np.ndarray, x: np.ndarray, q) -> tuple[dict, np.ndarray, dict]:
    """(stored entries without the layer prefix, the effective float weight, extra info) of one layer."""
    fmt, bits, _ = SPECS[algorithm]
    info: dict = {}
    smooth = None
    if algorithm in ("wint8", "wint4"):
        qw, sc = F.rtn(w, bits, q.group_size)
    elif algorithm == "gptq":
        qw, sc = A.gptq(w, x, bits, q.group_size, q.damp, q.act_order)
    elif algorithm == "awq":
        qw, sc, smooth = A.awq(w, x, bits, q.group_size, q.grid, q.clip)
    elif algorithm in ("a8w8", "a8w8c8"):
        qw, sc, smooth, alpha = A.smoothquant(w, x, list(q.alphas), q.smooth)
        info["alpha"] = alpha
    else:  # fp8
        qw, sc = A.fp8_weight(w, q.per_channel)
        info["act_scale"] = float(max(np.abs(x).max(), 1e-12) / F.E4M3_MAX)
    if fmt == "e4m3":
        w_hat = F.from_e4m3(qw) * sc
    else:
        w_hat = F.dequantize(qw, sc)
    entries = {"weight.qweight": F.pack_int4(qw) if fmt == "int4" else qw, "weight.scales": sc}
    if smooth is not None:
        entries["weight.smooth"] = smooth
        if algorithm == "awq":
            w_hat = w_hat / smooth[:, None]
    if "act_scale" in info:
        entries["act_scale"] = np.array([info["act_scale"]], dtype=np.float32)
    return entries, w_hat, info


def quantize_model(model, q, calib: list, progress: Callable) -> tuple[dict, dict, dict]:
    """Quantize `model`'s decoder Linears per `q` (the quant config node). Returns (checkpoint entries,
    quant_config, per-layer relative output error on the calibration inputs)."""
    algorithm = q.algorithm
    fmt, bits, activation = SPECS[algorithm]
    started = time.time()
    xs, kv_amax = calibrate(model, calib, algorithm == "a8w8c8", progress, q.include_head)
    calib_s = time.time() - started
    entries, errors, layers = {}, {}, {}
    heads = int(getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads)
    for name, layer in progress(len(xs), list(targets(model, q.include_head))):
        w = layer.weight.astype("float32").numpy()
        x = xs[name].astype(np.float32)
        stored, w_hat, info = quantize_layer(algorithm, w, x, q)
        ref = x @ w
        y = x @ w_hat
        if activation == "int8_per_token":
            y = A.fake_per_token_int8(x / stored["weight.smooth"]) @ w_hat
        elif activation == "e4m3_per_tensor":
            s = info["act_scale"]
            y = F.fake_e4m3(np.clip(x / s, -F.E4M3_MAX, F.E4M3_MAX)) * s @ w_hat
        errors[name] = float(np.sum((y - ref) ** 2) / max(np.sum(ref ** 2), 1e-12))
        for k, v in stored.items():
            entries[f"{name}.{k}"] = v
        if name in kv_amax:
            per_head = kv_amax[name].reshape(heads, -1).max(axis=1)
            entries[f"{name}.kv_scale"] = (np.maximum(per_head, 1e-12) / 127.0).astype(np.float32)
        layers[name] = {k: v for k, v in info.items() if k != "act_scale"}
    qc = {"algorithm": algorithm, "weight_format": fmt, "bits": bits, "group_size": int(q.group_size),
          "activation": activation, "kv_cache": "int8_per_head" if algorithm == "a8w8c8" else "none",
          "layers": layers}
    return entries, qc, {"errors": errors, "calibration_seconds": round(calib_s, 3),
                         "quantize_seconds": round(time.time() - started - calib_s, 3)}


def perplexity(model, examples: list[dict], batch_size: int = 16) -> float:
    """exp(mean NLL) of the labelled tokens of `examples` ({"input_ids", "labels"} with labels already
    shifted: labels[i] follows input_ids[:i+1]; IGNORE_INDEX where nothing is learned), right-padded batches."""
    import paddle

    from llmx.ops.vocab import token_logprobs
    from llmx.tokens import IGNORE_INDEX

    total, count = 0.0, 0
    model.eval()
    with paddle.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = np.zeros((len(chunk), width), dtype="int64")
            mask = np.zeros_like(ids)
            labels = np.full_like(ids, IGNORE_INDEX)
            for j, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[j, :n], mask[j, :n], labels[j, :n] = e["input_ids"], 1, e["labels"]
            out = model(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask))
            logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
            m = labels != IGNORE_INDEX
            nll = -token_logprobs(logits, paddle.to_tensor(np.where(m, labels, 0))).numpy()
            total += float((nll * m).sum())
            count += int(m.sum())
    return float(np.exp(total / max(count, 1)))
