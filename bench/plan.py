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


def overrides(model: str, layout: str, method: str, stage: str, recompute: bool, gguf: Path | None) -> list[str]:
    out = [f"stage={stage}", f"parallel={layout}", *SHAPES[model], "stage.train.max_steps=3", "stage.train.grad_accum=1",
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


def run_case(case, gguf, tmp: Path) -> dict:
    model, layout, method, stage, recompute = case
    args = overrides(*case, gguf)
    if not args:
        return {"skipped": "9 attention heads (3 KV heads) do not split over tp=2"}
    run = tmp / "-".join([model, layout, method, stage, "rc" if recompute else "norc"])
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args, f"hydra.run.dir={run}"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    s = json.loads((run / "summary.json").read_text())
    return {"plan": s["memory_plan_gib_per_rank"], "peak": s["memory_peak_gib_per_rank"],
            "wall": time.perf_counter() - started}


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
    ap.add_argument("--stages", default=None, help="sft,dpo")
    ap.add_argument("--fit", action="store_true", help="re-measure the per-layer activation constants")
    args = ap.parse_args()
    if args.fit:
        fit()
        return
    models = args.models.split(",")
    if args.all or args.layouts or args.stages:
        cases = [c for c in itertools.product(models, (args.layouts or ",".join(LAYOUTS)).split(","), ("full", "lora"),
                                              (args.stages or "sft,dpo").split(","), (False, True))]
    else:
        cases = [c for c in DEFAULT if c[0] in models]
    gguf = None
    if "real" in models:
        sys.path.insert(0, str(ROOT / "tests"))
        from real_model import real_gguf

        gguf, why = real_gguf()
        if gguf is None:
            sys.exit(f"the real checkpoint: {why} (or run with --models tiny)")
    print(f"{'model':5} {'layout':16} {'method':6} {'stage':5} {'recomp':6} {'rank':>4} {'plan GiB':>9} "
          f"{'peak GiB':>9} {'plan/peak':>9}  {'wall s':>6}", flush=True)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            r = run_case(case, gguf, Path(tmp))
            head = f"{case[0]:5} {case[1]:16} {case[2]:6} {case[3]:5} {'yes' if case[4] else 'no':6}"
            if "plan" not in r:
                print(f"{head} {'':>4} {r.get('skipped') or 'failed: ' + r['error']}", flush=True)
                continue
            for rank, (plan, peak) in enumerate(zip(r["plan"], r["peak"])):
                ratio = plan / peak if peak else float("nan")
                worst = max(worst, abs(ratio - 1))
                print(f"{head} {rank:4d} {plan:9.3f} {peak:9.3f} {ratio:9.2f}  {r['wall']:6.0f}"
                      + ("" if abs(ratio - 1) <= 0.10 else "  (outside 10%)"), flush=True)
    print(f"largest deviation: {worst:.0%}")


if __name__ == "__main__":
    main()
