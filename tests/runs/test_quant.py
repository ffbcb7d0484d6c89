"""stage=quantize on a tiny model trained here: GPTQ/AWQ W4 beat RTN W4, wint8 within 1% of float,
SmoothQuant beats naive W8A8, the checkpoint reloads to the same greedy tokens as its float
fake-quantized twin, and int4 packing is lossless.

The model: one SFT run that fits the 64 demo eval examples (so perplexity reacts to weight noise
instead of being near-uniform), then given large LLMs' activation outliers by a function-preserving
rescale (4 channels of each RMSNorm weight x30, the matching input rows of the next Linears /30) --
the situation AWQ and SmoothQuant exist for. Its float perplexity is unchanged by that rescale."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import FAST, compose, empty_folders, launch, read_json  # noqa: E402

from llmx.schema import asset_path  # noqa: E402

EVAL = asset_path("demo/sft_eval.jsonl")
CONFIGS = ("wint8", "wint4", "gptq_w4", "awq_w4", "a8w8", "a8w8c8", "fp8")


def add_outliers(src: Path, dst: Path, k: float) -> None:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    st = load_file(str(src / "model.safetensors"))
    rng = np.random.default_rng(0)
    following = {"input_layernorm": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                 "post_attention_layernorm": ["mlp.gate_proj", "mlp.up_proj"]}
    for name in list(st):
        prefix, _, rest = name.rpartition(".")[0].rpartition(".")
        nexts = [f"{prefix}.{n}.weight" for n in following.get(rest, [])] if rest in following else \
            (["lm_head.weight"] if name == "llama.norm.weight" else None)
        if nexts is None or not name.endswith("norm.weight"):
            continue
        ch = rng.choice(st[name].shape[0], 4, replace=False)
        st[name] = st[name].copy()
        st[name][ch] *= k
        for n in nexts:
            st[n] = st[n].copy()
            st[n][ch] /= k
    save_file(st, str(dst / "model.safetensors"), metadata={"format": "np"})


@pytest.fixture(scope="session")
def quant_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    launch(f"hydra.run.dir={d / 'sft'}", "stage.train.max_steps=120", "stage.train.lr=1e-2", f"stage.data.train={EVAL}",
           f"stage.data.eval={EVAL}", "stage.eval.num_samples=8", *FAST)
    add_outliers(d / "sft" / "model", d / "outliers", 30.0)
    proc = launch("-m", "stage=quantize", f"model.name_or_path={d / 'outliers'}", f"quant={','.join(CONFIGS)}",
                  "quant.group_size=-1", "quant.include_head=true", f"quant.calib_path={EVAL}", f"stage.eval={EVAL}",
                  f"hydra.sweep.dir={d / 'sweep'}")
    (d / "console.txt").write_text(proc.stdout)
    runs = {c: d / "sweep" / str(i) for i, c in enumerate(CONFIGS)}
    return d, runs, {c: read_json(r / "summary.json") for c, r in runs.items()}


def _load(model_dir):
    from omegaconf import OmegaConf

    from llmx.engine.model import build_model, build_tokenizer

    m = OmegaConf.merge(compose().model, {"name_or_path": str(model_dir)})
    tok = build_tokenizer(m)
    return build_model(m, tok, 0), tok


def test_perplexity_ordering(quant_sweep):
    d, runs, s = quant_sweep
    console = (d / "console.txt").read_text()
    for run in runs.values():  # each job ends naming its quantized model; no checkpoints, curves or losses
        assert f"  model_dir            {run / 'model'}\nrun dir: {run}  (summary.json, llmx.log)\n" \
               f"compare: python -m llmx diff {run} <another run>\n" in console
        assert empty_folders(run) == []
    ppl = {c: s[c]["perplexity_after"] for c in CONFIGS}
    float_ppl = s["wint8"]["perplexity_before"]
    assert all(s[c]["perplexity_before"] == float_ppl for c in CONFIGS)
    assert ppl["gptq_w4"] < ppl["wint4"] and ppl["awq_w4"] < ppl["wint4"], ppl
    assert abs(ppl["wint8"] / float_ppl - 1) < 0.01, (ppl["wint8"], float_ppl)
    for c in ("a8w8", "a8w8c8", "fp8"):
        assert abs(ppl[c] / float_ppl - 1) < 0.02, (c, ppl[c], float_ppl)
    # int4 stores half a byte per weight, int8 one; the float checkpoint four
    assert s["wint4"]["bytes_after"] < s["wint8"]["bytes_after"] < s["wint8"]["bytes_before"]
    for c in CONFIGS:
        assert set(s[c]["layer_errors"]) >= {"lm_head", "llama.layers.1.mlp.down_proj"} and s[c]["calibration_seconds"] > 0
    qc = read_json(runs["gptq_w4"] / "model" / "quant_config.json")
    assert (qc["algorithm"], qc["weight_format"], qc["bits"]) == ("gptq", "int4", 4)

    # naive W8A8 (no smoothing), quantized in this process from the same model and data
    from omegaconf import OmegaConf

    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.quant.checkpoint import save_quantized
    from llmx.quant.ptq import perplexity, quantize_model

    model, tok = _load(d / "outliers")
    enc = SftEncoder(tok, 128, 96)
    data = [enc.encode(c) for c in read_sft(EVAL)]
    assert perplexity(model, data) == pytest.approx(float_ppl, rel=1e-4)
    q = OmegaConf.merge(compose("quant=a8w8").quant, {"smooth": False, "include_head": True, "group_size": -1})
    entries, qc, _ = quantize_model(model, q, [e["input_ids"] for e in data], lambda n, it: it)
    (d / "naive").mkdir()
    save_quantized(d / "naive", model, tok, entries, qc)
    naive = perplexity(_load(d / "naive")[0], data)
    assert ppl["a8w8"] < naive, (ppl["a8w8"], naive)


def _unpack_nibbles(p: np.ndarray) -> np.ndarray:
    """Independent of llmx.quant.formats: byte b of row r holds rows 2r (low nibble) and 2r+1, offset by 8."""
    out = np.zeros((p.shape[0] * 2, p.shape[1]), dtype=np.int64)
    for r in range(p.shape[0]):
        out[2 * r] = (p[r].astype(np.int64) % 16) - 8
        out[2 * r + 1] = (p[r].astype(np.int64) // 16) - 8
    return out


def test_checkpoint_reloads_to_its_fake_quantized_twin(quant_sweep):
    """The GPTQ checkpoint, loaded as every stage loads a model (build_model), generates the same greedy
    tokens and logits as the float model with its weights replaced by the checkpoint's dequantized ints."""
    import paddle
    from safetensors.numpy import load_file

    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.engine.generate import greedy_generate

    d, runs, _ = quant_sweep
    qdir = runs["gptq_w4"] / "model"
    quantized, tok = _load(qdir)
    twin, _ = _load(d / "outliers")
    st = load_file(str(qdir / "model.safetensors"))
    layers = read_json(qdir / "quant_config.json")["layers"]
    state = twin.state_dict()
    for prefix in layers:
        w = _unpack_nibbles(st[prefix + ".weight.qweight"]) * st[prefix + ".weight.scales"]  # per-channel: one row of scales
        assert w.shape == tuple(state[prefix + ".weight"].shape)
        state[prefix + ".weight"].set_value(paddle.to_tensor(w.astype(np.float32)))
    enc = SftEncoder(tok, 128, 96)
    prompts = [enc.prompt_for_generation(c) for c in read_sft(EVAL)[:8]]
    assert greedy_generate(quantized, tok, prompts, 8, 8) == greedy_generate(twin, tok, prompts, 8, 8)
    ids = paddle.to_tensor([prompts[0]])
    a, b = quantized(input_ids=ids), twin(input_ids=ids)
    a, b = (a[0] if isinstance(a, (tuple, list)) else a), (b[0] if isinstance(b, (tuple, list)) else b)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
