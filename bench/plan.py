"""`plan`'s per-device estimate (llmx.plan) against the peak each rank measured (summary.json: peak RSS above the
paddle+paddlenlp import baseline on CPU, max_memory_allocated on GPU), for the tiny model and the real checkpoint
(SmolLM2-135M-Instruct, vocabulary 49,152; the GGUF the test suite fetches by pip, tests/real_model.py) over
layouts (single, dp2, tp2, pp2, sharding stage 1 and 2), full and LoRA, SFT and DPO, with and without recompute.
Target: within 10% per rank.

    python bench/plan.py                      # the default set: a few steps each (about 10 min on 2 cores)
    python bench/plan.py --all                # every layout x method x stage x recompute, both models
    python bench/plan.py --models tiny --layouts single,dp2 --stages sft
    python bench/plan.py --fit                # re-measure the activation constants llmx.plan's KEPT_* restate
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ("single", "dp2", "tp2", "pp2", "sharding_stage1", "sharding_stage2")
# The default set: every layout for the tiny model's full SFT, every method/stage/recompute for it on one
# process; the real model on one process (full and LoRA SFT, DPO, recompute) and dp2.
DEFAULT = ([("tiny", lay, "full", "sft", False) for lay in LAYOUTS]
           + [("tiny", "single", m, s, r) for m, s, r in itertools.product(("full", "lora"), ("sft", "dpo"), (False, True))
              if (m, s, r) != ("full", "sft", False)]
           + [("real", "single", m, s, r) for m, s, r in
              (("full", "sft", False), ("full", "sft", True), ("lora", "sft", False), ("full", "dpo", False))]
           + [("real", "dp2", "full", "sft", False)])
SHAPES = {"tiny": ("stage.train.batch_size=4", "stage.data.max_length=128"),
          # short rows keep the real model's steps to seconds on 2 cores
          "real": ("stage.train.batch_size=2", "stage.data.max_length=128")}


def overrides(model: str, layout: str, method: str, stage: str, recompute: bool, gguf: Path | None,
              steps: int = 3) -> list[str]:
    out = [f"stage={stage}", f"parallel={layout}", *SHAPES[model], f"stage.train.max_steps={steps}", "stage.train.grad_accum=1",
           "stage.train.save_steps=1000", "stage.train.progress_bar=false", f"stage.train.recompute={str(recompute).lower()}"]
    # full rows (plan counts max_length tokens per row; unpacked rows are shorter), no held-out evaluation
    out += ["stage.data.eval=null", "stage.eval.enabled=false"] if stage == "dpo" else \
        ["stage.data.eval=null", "stage.zero_padding=true"]
    if method == "lora":
        out.append("stage.peft.method=lora")
    if model == "real":
        out.append(f"model.name_or_path={gguf}")
    if layout == "tp2" and model == "real":  # SmolLM2's 9 heads do not split in two
        return []
    return out


def run_case(case, gguf, tmp: Path, steps: int = 3) -> dict:
    model, layout, method, stage, recompute = case
    args = overrides(*case, gguf, steps)
    if not args:
        return {"skipped": "9 attention heads (3 KV heads) do not split over tp=2"}
    run = tmp / "-".join([model, layout, method, stage, "rc" if recompute else "norc", f"{steps}steps"])
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args, f"hydra.run.dir={run}"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return {**measured(run), "wall": time.perf_counter() - started}


def measured(run: Path) -> dict:
    """A finished run's measured peaks (summary.json) beside llmx.plan's figures for its overrides, computed by
    this checkout's formula (so kept runs can be tabulated again after the formula changes: --table)."""
    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf

    from llmx.plan import compose_config, estimate

    s = json.loads((run / "summary.json").read_text())
    cfg = compose_config(list(OmegaConf.load(run / ".hydra" / "overrides.yaml")))
    est = estimate(cfg, device="cpu")
    writing, other = est["per_pipeline_stage_gib"], est["per_pipeline_stage_gib_not_writing"]
    peaks = s["memory_peak_gib_per_rank"]
    # the bench's layouts split over one axis: under pp2 rank i is pipeline stage i, under dp2 data-parallel rank i
    # (rank 0 writes the checkpoint)
    plan = [(other if cfg.parallel.dp > 1 and rank > 0 else writing)[rank % len(writing)] for rank in range(len(peaks))]
    return {"plan": plan, "peak": peaks, "tensors": s.get("memory_tensors_peak_gib"), "wall": float("nan")}


def case_of(run: Path) -> tuple:
    model, layout, method, stage, recompute, steps = run.name.rsplit("-", 5)
    return model, layout, method, stage, recompute == "rc", int(steps.removesuffix("steps"))


def fit() -> None:
    """One forward of LlamaForCausalLM per shape, in this process: paddle's own count of allocated host memory
    (tensors only) before and after, per token, against llmx.plan's count of what a layer keeps."""
    sys.path.insert(0, str(ROOT))
    import paddle
    __import__("paddlenlp")  # imported as a run imports it
    from paddle.base import core

    from llmx.engine.model import build_model, build_tokenizer
    from llmx.plan import _shapes, compose_config, hyperparameters, layer_activations, MODEL_H
    from llmx.schema import model_hparams

    print(f"{'hidden,inner,layers,heads':>26} {'tokens':>7} {'kept B/token':>13} {'plan B/token':>13} {'ratio':>6}")
    for arch in ("256,688,4,4", "256,688,8,4", "256,1376,4,4", "512,688,4,4", "256,688,4,8"):
        h, inner, layers, heads = map(int, arch.split(","))
        sizes = dict(hidden_size=h, intermediate_size=inner, num_hidden_layers=layers, num_attention_heads=heads,
                     num_key_value_heads=heads)
        cfg = compose_config([f"++model.sizes.tiny.{k}={v}" for k, v in sizes.items()])
        model = build_model(cfg.model, build_tokenizer(cfg.model), 0)
        dims = _shapes(cfg.model.family, hyperparameters(cfg.model.family, model_hparams(cfg.model)))
        for seq in (128, 256):
            ids = paddle.randint(0, dims["vocab"], [1, seq])
            before = core.host_memory_stat_current_value("Allocated", 0)
            out = model(input_ids=ids, labels=ids)
            kept = (core.host_memory_stat_current_value("Allocated", 0) - before) / seq
            planned = 4 * (layers * layer_activations(dims, seq, 1, False) + MODEL_H * h + 2 * dims["vocab"])
            print(f"{arch:>26} {seq:7d} {kept:13.0f} {planned:13.0f} {planned / kept:6.3f}", flush=True)
            del out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every combination (long)")
    ap.add_argument("--models", default="tiny,real")
    ap.add_argument("--layouts", default=None, help=f"comma-separated, of {','.join(LAYOUTS)}")
    ap.add_argument("--methods", default=None, help="full,lora")
    ap.add_argument("--stages", default=None, help="sft,dpo")
    ap.add_argument("--recompute", default=None, help="no,yes")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default 3)")
    ap.add_argument("--keep", default=None, help="a folder to keep the runs' directories in (logs, summary.json)")
    ap.add_argument("--table", default=None, metavar="DIR",
                    help="tabulate the runs kept in DIR (--keep DIR) again with this checkout's formula")
    ap.add_argument("--fit", action="store_true", help="re-measure the per-layer activation constants")
    args = ap.parse_args()
    if args.fit:
        fit()
        return
    models = args.models.split(",")
    picked = (args.layouts, args.methods, args.stages, args.recompute)
    if args.all or any(picked):
        cases = list(itertools.product(models, (args.layouts or ",".join(LAYOUTS)).split(","),
                                       (args.methods or "full,lora").split(","), (args.stages or "sft,dpo").split(","),
                                       [r == "yes" for r in (args.recompute or "no,yes").split(",")]))
    else:
        cases = [c for c in DEFAULT if c[0] in models]
    if args.table:
        runs = sorted(p.parent for p in Path(args.table).glob("*/summary.json"))
        report([(case_of(run), lambda run=run: measured(run)) for run in runs])
        return
    gguf = None
    if "real" in models:
        sys.path.insert(0, str(ROOT / "tests"))
        from real_model import real_gguf

        gguf, why = real_gguf()
        if gguf is None:
            sys.exit(f"the real checkpoint: {why} (or run with --models tiny)")
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        report([((*case, args.steps), lambda case=case: run_case(case, gguf, Path(tmp), args.steps)) for case in cases])


def report(rows) -> None:
    """Print each (case, result) as it comes: per rank, the plan, the measured peak and their ratio."""
    # tensors: rank 0's peak of paddle's own count of allocated host memory (what the plan's tensor terms count,
    # without the process and allocator around them)
    print(f"{'model':5} {'layout':16} {'method':6} {'stage':5} {'recomp':6} {'steps':>5} {'rank':>4} {'plan GiB':>9} "
          f"{'peak GiB':>9} {'peak/plan':>9} {'tensors':>8}  {'wall s':>6}", flush=True)
    worst = 0.0
    for case, result in rows:
        r = result()
        head = f"{case[0]:5} {case[1]:16} {case[2]:6} {case[3]:5} {'yes' if case[4] else 'no':6} {case[5]:5d}"
        if "plan" not in r:
            print(f"{head} {'':>4} {r.get('skipped') or 'failed: ' + r['error']}", flush=True)
            continue
        for rank, (plan, peak) in enumerate(zip(r["plan"], r["peak"])):
            off = abs(plan - peak) / peak if peak else float("nan")  # the target: the plan within 10% of the peak
            worst = max(worst, off)
            tensors = f"{r['tensors']:8.3f}" if rank == 0 and r.get("tensors") is not None else f"{'':8}"
            print(f"{head} {rank:4d} {plan:9.3f} {peak:9.3f} {peak / plan:9.2f} {tensors}  {r['wall']:6.0f}"
                  + ("" if off <= 0.10 else "  (outside 10%)"), flush=True)
    print(f"largest deviation: {worst:.0%}")


if __name__ == "__main__":
    main()
