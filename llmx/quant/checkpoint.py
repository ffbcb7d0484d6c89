"""The quantized checkpoint and its loader.

A directory with config.json, the tokenizer, `quant_config.json` and `model.safetensors` holding,
for each quantized Linear `P` (paddle layout [in, out]):
  P.weight.qweight  int8 [in, out] (wint8, a8w8), uint8 [in/2, out] two int4 per byte (int4), or
                    uint8 e4m3 bytes (fp8)
  P.weight.scales   float32 [groups, out]
  P.weight.smooth   float32 [in] (AWQ: the weights were scaled by it; SmoothQuant: activations are divided by it)
  P.act_scale       float32 [1] (fp8: static per-tensor activation scale)
  P.kv_scale        float32 [heads] (a8w8c8: int8 per-head scales of the k/v projections' outputs = the KV cache)
and every other tensor as it was. On CPU the loader dequantizes each layer once into a float Linear
and emulates quantized activations with forward hooks (quantize-dequantize); GPU kernels are the
inference issue's business.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmx.convert.tokenizer import save_tokenizer
from llmx.quant import QUANT_FILE
from llmx.quant import formats as F
from llmx.quant.algorithms import fake_per_token_int8


def dequantized(state: dict, prefix: str, qc: dict) -> np.ndarray:
    q, sc = state[prefix + ".weight.qweight"], state[prefix + ".weight.scales"]
    fmt = qc["weight_format"]
    if fmt == "int4":
        w = F.dequantize(F.unpack_int4(q), sc)
    elif fmt == "e4m3":
        w = F.from_e4m3(q) * sc
    else:
        w = F.dequantize(q, sc)
    smooth = state.get(prefix + ".weight.smooth")
    if smooth is not None and qc["algorithm"] == "awq":
        w = w / smooth[:, None]
    return w.astype(np.float32)


def _act_hook(kind: str, smooth, act_scale):
    import paddle

    def hook(layer, inputs):
        x = inputs[0]
        dtype = x.dtype
        a = x.astype("float32").numpy()
        if smooth is not None:
            a = a / smooth
        if kind == "int8_per_token":
            a = fake_per_token_int8(a)
        elif kind == "e4m3_per_tensor":
            a = F.fake_e4m3(np.clip(a / act_scale, -F.E4M3_MAX, F.E4M3_MAX)) * act_scale
        return (paddle.to_tensor(a.astype(np.float32)).astype(dtype),) + tuple(inputs[1:])
    return hook


def _kv_hook(scale: np.ndarray):
    import paddle

    def hook(layer, inputs, output):
        dtype = output.dtype
        o = output.astype("float32").numpy()
        shape = o.shape
        o = o.reshape(*shape[:-1], len(scale), -1)
        s = scale[:, None]
        o = np.clip(np.rint(o / s), -128, 127) * s
        return paddle.to_tensor(o.reshape(shape).astype(np.float32)).astype(dtype)
    return hook


def attach_runtime(model, qc: dict, state: dict) -> None:
    """Hooks that emulate quantized activations / KV cache on the dequantized model."""
    layers = dict(model.named_sublayers())
    for prefix, meta in qc["layers"].items():
        layer = layers[prefix]
        if qc["activation"] != "none":
            smooth = state.get(prefix + ".weight.smooth") if qc["algorithm"] in ("a8w8", "a8w8c8") else None
            layer.register_forward_pre_hook(_act_hook(qc["activation"], smooth, state.get(prefix + ".act_scale")))
        if prefix + ".kv_scale" in state:
            layer.register_forward_post_hook(_kv_hook(state[prefix + ".kv_scale"]))


def load_quantized(model_cls, config, model_dir: str, dtype: str):
    """build_model's hook: the model of a quantized checkpoint, dequantized per layer, with its
    activation quantization emulated."""
    import paddle
    from safetensors.numpy import load_file

    qc = json.loads(Path(model_dir, QUANT_FILE).read_text())
    state = load_file(str(Path(model_dir, "model.safetensors")))
    model = model_cls.from_config(config, dtype=dtype)
    float_state = {}
    for name, value in state.items():
        if name.endswith((".weight.qweight", ".weight.scales", ".weight.smooth", ".act_scale", ".kv_scale")):
            continue
        float_state[name] = value
    for prefix in qc["layers"]:
        float_state[prefix + ".weight"] = dequantized(state, prefix, qc)
    own = model.state_dict()
    missing = [k for k in own if k not in float_state]
    if missing:
        raise ValueError(f"{model_dir}/model.safetensors lacks {missing[0]}")
    model.set_state_dict({k: paddle.to_tensor(v).astype(own[k].dtype) for k, v in float_state.items() if k in own})
    attach_runtime(model, qc, state)
    model.eval()
    return model


def save_quantized(out_dir: Path, model, tokenizer, entries: dict, qc: dict) -> None:
    """Write the checkpoint: every tensor of `model` except the quantized weights, plus `entries`."""
    from safetensors.numpy import save_file

    import paddle

    state = {k: (v.astype("float32") if v.dtype in (paddle.bfloat16, paddle.float16) else v).numpy()
             for k, v in model.state_dict().items()}
    for prefix in qc["layers"]:
        state.pop(prefix + ".weight", None)
    state.update(entries)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "np"})
    model.config.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    (out_dir / QUANT_FILE).write_text(json.dumps(qc, indent=2, sort_keys=True) + "\n")
