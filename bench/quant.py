"""Every quant config side by side: perplexity (held-out answers), size on disk and CPU greedy
generation tokens/s, each relative to the float model.

A float model is trained first (a short SFT of the bundled tiny model, or --model DIR/run), then one
`python launch.py -m stage=quantize quant=...` sweep quantizes it with every config; generation speed
is measured here, in one process, loading each checkpoint as every stage does (build_model). On CPU
quantized checkpoints are dequantized at load time (weights) and activations are quantize-dequantized
by hooks, so int8/fp8-activation configs are slower than float here; GPU kernels are not measured.

    python bench/quant.py                                    # tiny model: about 2 min on 2 cores
    python bench/quant.py --model outputs/sft/tiny/RUN --configs wint8,gptq_w4 --group-size 64
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
CONFIGS = ("wint8", "wint4", "gptq_w4", "awq_w4", "a8w8", "a8w8c8", "fp8")


def launch(*args: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"launch.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def tokens_per_s(model_dir: str, prompts: int, new_tokens: int) -> float:
    import warnings

    warnings.filterwarnings("ignore")  # library deprecation notices: the table is the output
    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf

    from llmx.schema import CONF_DIR, asset_path
    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.engine.generate import greedy_generate
    from llmx.engine.model import build_model, build_tokenizer

    m = OmegaConf.load(CONF_DIR / "model" / "llama.yaml")
    m = OmegaConf.merge(m, {"family": m.get("family", "llama"), "name_or_path": model_dir, "size": "tiny"})
    tok = build_tokenizer(m)
    model = build_model(m, tok, 0)
    enc = SftEncoder(tok, 128, 96)
    ps = [enc.prompt_for_generation(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))[:prompts]]
    greedy_generate(model, tok, ps[:2], 2, 2)  # warm-up
    start = time.perf_counter()
    out = greedy_generate(model, tok, ps, new_tokens, len(ps))
    return max(sum(len(o) for o in out), 1) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model, adapter or llmx run directory (default: train the tiny model here)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--group-size", type=int, default=-1)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    a = ap.parse_args()
    configs = a.configs.split(",")
    with tempfile.TemporaryDirectory(prefix="llmx-bench-quant-") as tmp:
        tmp = Path(tmp)
        model = a.model
        if model is None:
            print(f"training the tiny model ({a.steps} steps)...", flush=True)
            launch(f"hydra.run.dir={tmp / 'sft'}", f"stage.train.max_steps={a.steps}", "stage.train.lr=1e-2",
                   "stage.train.progress_bar=false", "stage.eval.num_samples=8")
            model = str(tmp / "sft")
        print(f"quantizing with {', '.join(configs)}...", flush=True)
        launch("-m", "stage=quantize", f"model.name_or_path={model}", f"quant={','.join(configs)}",
               f"quant.group_size={a.group_size}", f"hydra.sweep.dir={tmp / 'sweep'}")
        rows = []
        for i, c in enumerate(configs):
            s = json.loads((tmp / "sweep" / str(i) / "summary.json").read_text())
            rows.append((c, s, tokens_per_s(s["model_dir"], a.prompts, a.new_tokens)))
        from llmx.sources import resolve

        float_tps = tokens_per_s(resolve(model).model_dir, a.prompts, a.new_tokens)
    s0 = rows[0][1]
    print(f"\n{'config':<10} {'ppl':>9} {'ppl/float':>9} {'MB':>8} {'size/float':>10} {'tok/s':>8} {'speed/float':>11}")
    print(f"{'float':<10} {s0['perplexity_before']:>9.4f} {1:>9.4f} {s0['bytes_before'] / 1e6:>8.3f} {1:>10.3f} "
          f"{float_tps:>8.1f} {1:>11.3f}")
    for c, s, tps in rows:
        print(f"{c:<10} {s['perplexity_after']:>9.4f} {s['perplexity_after'] / s['perplexity_before']:>9.4f} "
              f"{s['bytes_after'] / 1e6:>8.3f} {s['bytes_after'] / s['bytes_before']:>10.3f} {tps:>8.1f} {tps / float_tps:>11.3f}")


if __name__ == "__main__":
    main()
