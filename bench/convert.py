"""Conversion throughput and peak memory: llmx.convert (both directions) and, side by side, PaddleNLP's
own `from_pretrained(..., convert_from_torch=True)` on a copy of the same checkpoint.

The checkpoint is generated here (no torch needed): a Llama-shaped HF safetensors file of a few hundred MB
(`--hidden 1024 --layers 3 --vocab 32000`: 417 MB, largest tensor 131 MB), random float32, written with
HF's names and `format: pt`. Each conversion runs in a fresh process that imports everything first, then
reads its resident memory (VmRSS), converts, and reads the high-water mark (VmHWM): the difference is the
conversion's extra peak memory, printed in MB and as a multiple of the largest tensor and of the checkpoint.

    python bench/convert.py                       # ~1 min on 2 cores, ~2 GB of temporary disk
    python bench/convert.py --layers 6 --no-paddlenlp
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_checkpoint(d: Path, hidden: int, layers: int, vocab: int, inter: int) -> dict:
    from llmx.convert.tensors import StreamWriter

    d.mkdir(parents=True)
    heads = max(1, hidden // 64)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "float32"}
    (d / "config.json").write_text(json.dumps(config, indent=2))
    plan = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            plan[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        plan[p + "mlp.gate_proj.weight"] = (inter, hidden)
        plan[p + "mlp.up_proj.weight"] = (inter, hidden)
        plan[p + "mlp.down_proj.weight"] = (hidden, inter)
        plan[p + "input_layernorm.weight"] = (hidden,)
        plan[p + "post_attention_layernorm.weight"] = (hidden,)
    plan["model.norm.weight"] = (hidden,)
    plan["lm_head.weight"] = (vocab, hidden)
    writer = StreamWriter(d / "model.safetensors", {k: ("F32", s) for k, s in plan.items()}, {"format": "pt"})
    rng = np.random.default_rng(0)
    for name, shape in plan.items():
        writer.write(name, rng.standard_normal(shape, dtype=np.float32) * 0.02)
    writer.close()
    sizes = [int(np.prod(s)) * 4 for s in plan.values()]
    return {"bytes": sum(sizes), "largest": max(sizes)}


CHILD = r'''
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

import numpy, paddle, paddlenlp.transformers  # everything imported before the baseline
from llmx.convert.hf import hf_to_llmx, llmx_to_hf
from llmx.families import fixes
how, src, out = sys.argv[1:4]
base = status("VmRSS")
start = time.time()
if how == "from_hf":
    hf_to_llmx(Path(src), Path(out))
elif how == "to_hf":
    llmx_to_hf(Path(src), Path(out))
else:  # PaddleNLP's own conversion (it writes model_state.pdparams into src)
    paddlenlp.transformers.AutoModelForCausalLM.from_pretrained(src, convert_from_torch=True, dtype="float32")
seconds = time.time() - start
print(json.dumps({{"seconds": seconds, "base": base, "peak": status("VmHWM")}}))
'''


def measure(how: str, src: Path, out: Path) -> dict:
    code = CHILD.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, how, str(src), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--no-paddlenlp", action="store_true", help="skip PaddleNLP's convert_from_torch")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmx-bench-convert-"))
    try:
        t = time.time()
        info = make_checkpoint(tmp / "hf", args.hidden, args.layers, args.vocab, args.intermediate)
        mb, largest = info["bytes"] / 1e6, info["largest"] / 1e6
        print(f"checkpoint: {mb:.0f} MB float32 safetensors, largest tensor {largest:.0f} MB "
              f"(generated in {time.time() - t:.0f} s)")
        rows = [("llmx from_hf", measure("from_hf", tmp / "hf", tmp / "llmx")),
                ("llmx to_hf", measure("to_hf", tmp / "llmx", tmp / "hf2"))]
        if not args.no_paddlenlp:
            shutil.copytree(tmp / "hf", tmp / "hf-copy")
            rows.append(("paddlenlp convert_from_torch", measure("paddlenlp", tmp / "hf-copy", tmp / "unused")))
        print(f"{'conversion':<30} {'s':>6} {'MB/s':>7} {'peak extra MB':>14} {'x largest':>10} {'x checkpoint':>13}")
        for name, r in rows:
            if "error" in r:
                print(f"{name:<30} failed: {r['error']}")
                continue
            extra = (r["peak"] - r["base"]) / 1e6
            print(f"{name:<30} {r['seconds']:>6.1f} {mb / r['seconds']:>7.0f} {extra:>14.0f} {extra / largest:>10.2f} "
                  f"{extra / mb:>13.2f}")
        ok = all("error" not in r and (r["peak"] - r["base"]) / 1e6 < 2 * largest + 64 for _, r in rows[:2])
        print(f"convert: llmx peak extra memory {'below' if ok else 'ABOVE'} 2x the largest tensor + 64 MB "
              f"(target) in both directions")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
