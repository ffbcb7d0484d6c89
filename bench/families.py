"""Every model family side by side: its parameters (total and, for mixtures of experts, active per token) at its
`tiny` size and at one published mid size, as `plan` counts them, and the tokens/s of a short SFT of its tiny
size on CPU, all in one process (llmx's own sft runner per family, tests/runs/run_matrix.py's way: one paddle
import for the whole table).

The tokens/s column is the median of each run's logged intervals after the first (`tokens_per_s` in
metrics.jsonl: the batch's tokens over the interval), so start-up and the first step's graph building are left
out. Tiny models are bound by per-op overhead, not by arithmetic: the column ranks how heavy each family's
model code is per token (its extra norms, routing loops, masks), not what a real size would run at.

    python bench/families.py                        # ~2 min on 2 shared cores
    python bench/families.py --families llama,qwen3 --steps 40
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def parse():
    from llmx.families import FAMILIES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trainable = [name for name, f in FAMILIES.items() if not f.not_trainable]
    p.add_argument("--families", default=",".join(trainable), help="comma-separated families (default: every trainable one)")
    p.add_argument("--steps", type=int, default=20, help="SFT steps per family")
    p.add_argument("--batch-size", type=int, default=8)
    return p.parse_args()


def mid_size(family: str) -> str:
    """The smallest published size of the family's conf file (by its parameter count)."""
    from llmx.families import family as record
    from llmx.schema import CONF_DIR
    from omegaconf import OmegaConf

    sizes = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{family}.yaml").sizes)
    real = {name: record(family).params(hp).total for name, hp in sizes.items() if name != "tiny"}
    return min(real, key=real.get) if real else "tiny"


def counts(family: str, size: str) -> tuple[int, int]:
    from helpers import compose

    from llmx.plan import count_params
    from llmx.schema import model_hparams

    params = count_params(family, model_hparams(compose(f"model={family}", f"model.size={size}").model))
    return params.total, params.active


def sft_speeds(families: list, steps: int, batch: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="llmx-bench-families-"))
    cmd = [sys.executable, str(ROOT / "tests" / "runs" / "run_matrix.py"), "--out", str(out)]
    for f in families:
        cmd += ["--run", f, ";".join([f"model={f}", "model.size=tiny", "stage=sft", f"stage.train.max_steps={steps}",
                                      f"stage.train.batch_size={batch}", "stage.train.logging_steps=2",
                                      "stage.train.save_steps=100000", "stage.eval.enabled=false",
                                      "stage.train.progress_bar=false"])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    speeds = {}
    for f in families:
        metrics = out / f / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        rates = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
        speeds[f] = statistics.median(rates) if rates else None
    if proc.returncode:
        failed = sorted(p.parent.name for p in out.glob("*/error.rank*.txt"))
        print(f"families: runs failed: {', '.join(failed) or proc.stderr[-500:]}")
    return speeds


def main() -> None:
    args = parse()
    families = [f for f in args.families.split(",") if f]
    speeds = sft_speeds(families, args.steps, args.batch_size)
    print(f"{'family':<13}{'tiny total':>12}{'mid size':>10}{'total':>10}{'active':>10}{'tiny SFT tok/s':>16}")
    for f in families:
        tiny, _ = counts(f, "tiny")
        mid = mid_size(f)
        total, active = counts(f, mid)
        speed = f"{speeds[f]:.0f}" if speeds.get(f) else "failed"
        print(f"{f:<13}{tiny:>12,}{mid:>10}{total / 1e9:>9.2f}B{active / 1e9:>9.2f}B{speed:>16}")


if __name__ == "__main__":
    main()
