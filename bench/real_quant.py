"""`stage=quantize` on the real pretrained checkpoint (SmolLM2-135M-Instruct, vocabulary 49,152; the GGUF the
test suite fetches by pip, tests/real_model.py), with the 64 held-out examples of the bundled demo set rendered
through its ChatML template: how long each config takes, end to end and in its parts, beside its perplexity.

Before llmx's vocabulary ops (llmx.ops.vocab), Paddle's CPU log_softmax, quadratic in the vocabulary, kept the
first perplexity of this run from finishing in 17 minutes.

    python bench/real_quant.py                       # gptq_w4 and wint4, about 3 min on 2 cores
    python bench/real_quant.py --configs gptq_w4 --calib-samples 128
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="gptq_w4,wint4")
    ap.add_argument("--calib-samples", type=int, default=32)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from real_model import real_gguf

    gguf, why = real_gguf()
    if gguf is None:
        sys.exit(why)
    sys.path.insert(0, str(ROOT))
    from llmx.schema import asset_path

    held_out = asset_path("demo/sft_eval.jsonl")
    examples = sum(1 for line in open(held_out) if line.strip())
    print(f"model: {gguf.name}; held-out examples: {examples}; calibration samples: {args.calib_samples}")
    print(f"{'config':10} {'wall s':>8} {'quantize s':>11} {'calib s':>8} {'ppl before':>11} {'ppl after':>10} "
          f"{'MB before':>10} {'MB after':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            run = Path(tmp, name)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "stage=quantize", f"quant={name}",
                                   f"model.name_or_path={gguf}", f"stage.eval={held_out}",
                                   f"quant.calib_samples={args.calib_samples}", f"hydra.run.dir={run}"],
                                  cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            s = json.loads((run / "summary.json").read_text())
            print(f"{name:10} {wall:8.1f} {s['quantize_seconds']:11.1f} {s['calibration_seconds']:8.1f} "
                  f"{s['perplexity_before']:11.3f} {s['perplexity_after']:10.3f} {s['bytes_before'] / 1e6:10.1f} "
                  f"{s['bytes_after'] / 1e6:9.1f}")


if __name__ == "__main__":
    main()
