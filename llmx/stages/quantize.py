"""Post-training quantization (stage=quantize, the `quant` group picks the method): calibrate on
SFT examples (any format of llmx.data.formats), quantize every decoder Linear (wint8, wint4, gptq, awq, a8w8 SmoothQuant,
a8w8c8, fp8), write `model/` (packed integers + scales + quant_config.json, loadable wherever
model.name_or_path is) and report perplexity on held-out data before and after, bytes on disk,
per-layer reconstruction error and calibration time. `stage.evaluate_only=true` measures a
quantized (or float) model.name_or_path instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from llmx.schema import asset_path, existing, model_family, positive, require
from llmx.data.formats import read


@dataclass
class Config:
    runner: str = "quantize"
    eval: str = "${asset:demo/sft_eval.jsonl}"  # held-out SFT examples (any format of llmx.data.formats): perplexity of the answers
    max_length: int = 128  # tokens per example
    evaluate_only: bool = False  # measure model.name_or_path (quantized or not); quantize nothing
    output_dir: Optional[str] = None  # default: <run dir>/model


def _model_dims(m: DictConfig) -> dict:
    """hidden/intermediate sizes, paddle-free: from the model directory or the size table."""
    if m.name_or_path:
        from llmx.sources import resolve

        cfg = json.loads(Path(resolve(m.name_or_path).model_dir, "config.json").read_text())
    else:
        cfg = dict(m.sizes[m.size])
    cfg.update(dict(m.overrides))
    return cfg


def validate(cfg: DictConfig) -> None:
    s, q, par = cfg.stage, cfg.quant, cfg.parallel
    # calibration and the per-layer algorithms see whole weight matrices: one process
    require(par.dp * par.tp * par.pp * par.sharding == 1, "parallel", f"dp{par.dp} tp{par.tp} pp{par.pp} sharding{par.sharding}",
            "stage=quantize runs in one process (parallel=single)")
    encoding = model_family(cfg.model).encoding
    require(encoding == "causal", "model.family", cfg.model.family,
            f"stage=quantize calibrates on causal batches, not on its {encoding} encoding")
    existing("stage.eval", s.eval, "file")
    existing("quant.calib_path", q.calib_path, "file")
    positive("stage.max_length", s.max_length, 2)
    if s.evaluate_only:
        require(bool(cfg.model.name_or_path), "model.name_or_path", None, "stage.evaluate_only needs a model to measure")
        return
    require(q.algorithm != "none", "quant.algorithm", q.algorithm,
            "stage=quantize needs a method: quant=wint8|wint4|gptq_w4|awq_w4|a8w8|a8w8c8|fp8")
    require(bool(cfg.model.name_or_path), "model.name_or_path", None,
            "stage=quantize quantizes a trained model: a model, adapter or llmx run directory")
    positive("quant.calib_samples", q.calib_samples)
    require(0.0 <= q.damp < 1.0, "quant.damp", q.damp, "must be in [0, 1)")
    positive("quant.grid", q.grid)
    require(all(0.0 <= a <= 1.0 for a in q.alphas), "quant.alphas", list(q.alphas), "each in [0, 1]")
    dims = _model_dims(cfg.model)
    ins = {"hidden_size": dims.get("hidden_size"), "intermediate_size": dims.get("intermediate_size")}
    if q.group_size != -1:
        require(q.group_size >= 2 and q.group_size % 2 == 0, "quant.group_size", q.group_size, "must be -1 (per channel) or an even size >= 2")
        for k, v in ins.items():
            require(not v or v % q.group_size == 0, "quant.group_size", q.group_size,
                    f"must divide the model's {k} ({v}); try 64, 128 or -1 (per channel)")
    if q.algorithm in ("wint4", "gptq", "awq"):
        for k, v in ins.items():
            require(not v or v % 2 == 0, "quant.algorithm", q.algorithm, f"int4 packs two rows per byte: {k} ({v}) must be even")


def prepare(cfg: DictConfig) -> dict:
    q = cfg.quant
    calib = read("sft", q.calib_path or asset_path("demo/sft_train.jsonl"))
    return {"calib": calib[: q.calib_samples], "eval": read("sft", cfg.stage.eval)}


def _encoded(tokenizer, convs, max_length: int) -> list[dict]:
    from llmx.data.sft import SftEncoder

    enc = SftEncoder(tokenizer, max_length, max_length * 3 // 4)
    return [enc.encode(c) for c in convs]


def _weight_bytes(model_dir: str) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".pdparams"))


def run(cfg: DictConfig, ctx) -> dict:
    from tqdm import tqdm

    from llmx.console import say
    from llmx.engine import model as models
    from llmx.experiment import atomic_dir
    from llmx.quant.checkpoint import save_quantized
    from llmx.quant.ptq import perplexity, quantize_model

    s, q = cfg.stage, cfg.quant
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, tokenizer, cfg.seed)
    eval_set = _encoded(tokenizer, ctx.inputs["eval"], s.max_length)
    source = models.model_source(cfg.model)
    ppl = perplexity(model, eval_set)
    if s.evaluate_only:
        say("perplexity of %s: %.4f", source.model_dir, ppl)
        return {"stage": "quantize", "perplexity": round(ppl, 5), "bytes": _weight_bytes(source.model_dir)}
    progress = lambda n, it: tqdm(it, total=n, desc="calibrating", file=__import__("sys").stderr,  # noqa: E731
                                  disable=not __import__("sys").stderr.isatty(), dynamic_ncols=True)
    entries, qc, info = quantize_model(model, q, [e["input_ids"] for e in _encoded(tokenizer, ctx.inputs["calib"], s.max_length)], progress)
    out = Path(s.output_dir) if s.output_dir else ctx.experiment.dir / "model"
    with atomic_dir(out) as tmp:
        save_quantized(tmp, model, tokenizer, entries, qc)
    del model
    m = cfg.model.copy()
    m.name_or_path = str(out)
    quantized = models.build_model(m, tokenizer, cfg.seed)  # as every later stage loads it
    after = perplexity(quantized, eval_set)
    errors = info["errors"]
    say("%s: perplexity %.4f -> %.4f", q.algorithm, ppl, after)
    return {"stage": "quantize", "algorithm": q.algorithm, "perplexity_before": round(ppl, 5),
            "perplexity_after": round(after, 5), "bytes_before": _weight_bytes(source.model_dir),
            "bytes_after": _weight_bytes(str(out)), "calibration_seconds": info["calibration_seconds"],
            "quantize_seconds": info["quantize_seconds"], "layer_error_max": round(max(errors.values()), 6),
            "layer_errors": {k: round(v, 6) for k, v in errors.items()}, "model_dir": str(out)}
