"""Every PEFT method side by side on the demo task: the same SFT job (model, data, steps, batch, seed)
with each adapter, each run a fresh `python launch.py` as a user starts it.

Per method the table shows: trainable parameters, adapter size on disk (MB), steady-state step time
(median over logging intervals of interval_s / logging_steps, the first interval skipped as warm-up)
and its ratio to LoRA's, the held-out eval loss and the exact match of greedy answers on the held-out
prompts.

    python bench/peft.py                                   # every method, 400 steps: about 10 min on 2 cores
    python bench/peft.py --methods lora,vera --steps 100 --overrides model.overrides.hidden_size=256
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "lora": ["stage=lora"],
    "rslora": ["stage=lora", "stage.peft.variant=rslora"],
    "pissa": ["stage=lora", "stage.peft.variant=pissa"],
    "mora": ["stage=lora", "stage.peft.variant=mora"],
    "moslora": ["stage=lora", "stage.peft.variant=moslora"],
    "lora+": ["stage=lora", "stage.peft.lora_plus_ratio=16"],
    "lokr": ["stage=lokr"],
    "vera": ["stage=vera"],
    "reft": ["stage=reft"],
    "prefix": ["stage=prefix"],
}


def run(method: str, overrides: list, out: Path, steps: int, logging_steps: int) -> dict:
    run_dir = out / method.replace("+", "_plus")
    cmd = [sys.executable, str(ROOT / "launch.py"), f"hydra.run.dir={run_dir}", *METHODS[method], *overrides,
           f"stage.train.max_steps={steps}", f"stage.train.logging_steps={logging_steps}",
           f"stage.train.save_steps={steps}", "stage.train.progress_bar=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"method": method, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    intervals = [r["interval_s"] / logging_steps for r in rows if "interval_s" in r][1:]
    adapter = Path(summary["adapter_dir"])
    return {"method": method, "trainable": summary["trainable_params"],
            "adapter_mb": sum(f.stat().st_size for f in adapter.iterdir() if f.is_file()) / 2**20,
            "step_s": statistics.median(intervals) if intervals else float("nan"),
            "eval_loss": summary["eval_loss"], "exact_match": summary.get("exact_match", float("nan"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--logging-steps", type=int, default=20)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra launch.py overrides for every run")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; allowed: {', '.join(METHODS)}")

    with tempfile.TemporaryDirectory(prefix="llmx-bench-peft-") as tmp:
        results = []
        for method in methods:
            print(f"  {method} ...", flush=True)
            results.append(run(method, args.overrides, Path(tmp), args.steps, args.logging_steps))
    lora_step = next((r["step_s"] for r in results if r["method"] == "lora" and "step_s" in r), None)
    print(f"\n{args.steps} steps on the demo task ({' '.join(args.overrides) or 'the tiny default model'})\n")
    print(f"{'method':<9} {'trainable':>10} {'adapter MB':>11} {'step s':>8} {'vs LoRA':>8} {'eval loss':>10} {'exact match':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['method']:<9} failed: {r['error']}")
            continue
        ratio = f"{r['step_s'] / lora_step:.2f}x" if lora_step else "-"
        print(f"{r['method']:<9} {r['trainable']:>10,} {r['adapter_mb']:>11.3f} {r['step_s']:>8.4f} {ratio:>8} "
              f"{r['eval_loss']:>10.4f} {r['exact_match']:>12.3f}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
