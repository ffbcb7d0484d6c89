"""RL rollouts: llmx's continuous-batching engine vs PaddleNLP's `generate`, and where a PPO step's time goes.

A short SFT of the bundled tiny model (or --model DIR: a model or run directory) answers --prompts demo
prompts by sampling (temperature 1, up to --max-new-tokens, eos ends a response), --max-batch rows at a
time, two ways in one process, alternating which goes first per round (--rounds):
- llmx: `llmx.rl.rollout.generate`, the engine PPO/GRPO use (KV cache; a finished row leaves and the next
  prompt takes its place at once);
- paddlenlp: `model.generate(decode_strategy="sampling")` batch by batch (left-padded; a batch runs until
  its last row ends).
Tokens counted are each response's own (up to and including eos). It prints tokens/s per way and round and
`rl: rollout tokens/s llmx/paddlenlp ...x`; then runs `stage=ppo` (--ppo-steps, exact-match reward, no
reward model) from the same model and prints the share of the step time spent in rollouts vs training
(from its metrics.jsonl).

    python bench/rl.py                    # ~2 min on 2 shared cores
    python bench/rl.py --model outputs/my_sft --prompts 256 --max-batch 32
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
sys.path.insert(0, str(ROOT))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model or run dir (default: a 300-step SFT of the tiny model)")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ppo-steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def launch(*overrides: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "launch.py"), "stage.train.progress_bar=false", *overrides],
                   cwd=ROOT, check=True, capture_output=True, text=True)


def response_length(row, eos: int) -> int:
    row = list(row)
    return row.index(eos) + 1 if eos in row else len(row)


def main() -> None:
    args = parse()
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    model_path = args.model
    if model_path is None:
        print("training a 300-step SFT of the tiny model ...", flush=True)
        launch("stage.train.max_steps=300", "stage.eval.enabled=false", f"hydra.run.dir={tmp / 'sft'}")
        model_path = str(tmp / "sft")

    import numpy as np
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from llmx.schema import asset_path
    from llmx.console import quiet_libraries
    from llmx.data.formats import read_prompts
    from llmx.rl.config import RolloutConfig
    from llmx.rl.loop import Prompts
    from llmx.rl.rollout import generate, sample_seed
    from llmx.sources import resolve

    quiet_libraries(False)
    paddle.set_device("cpu")
    source = resolve(model_path)
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(source.model_dir)
    model.eval()
    lines = read_prompts(asset_path("demo/sft_train.jsonl"), purpose="rl")[:args.prompts]
    ids = Prompts(lines, tokenizer, 96).ids
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rollout = RolloutConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, max_batch=args.max_batch)

    def llmx_way(round_: int) -> tuple[int, float]:
        out = generate(model, tokenizer, ids, [sample_seed(round_, 0, i) for i in range(len(ids))], rollout)
        model.eval()
        return sum(len(t) for t in out.tokens), out.seconds

    def paddlenlp_way(round_: int) -> tuple[int, float]:
        paddle.seed(round_)
        tokens, started = 0, time.perf_counter()
        for i in range(0, len(ids), args.max_batch):
            chunk = ids[i:i + args.max_batch]
            width = max(len(p) for p in chunk)
            input_ids = np.full((len(chunk), width), pad, "int64")
            mask = np.zeros((len(chunk), width), "int64")
            for r, p in enumerate(chunk):
                input_ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
            with paddle.no_grad():
                out = model.generate(input_ids=paddle.to_tensor(input_ids), attention_mask=paddle.to_tensor(mask),
                                     max_new_tokens=args.max_new_tokens, decode_strategy="sampling", temperature=1.0,
                                     top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad)[0].numpy()
            tokens += sum(response_length(row, eos) for row in out)
        return tokens, time.perf_counter() - started

    ways = {"llmx": llmx_way, "paddlenlp": paddlenlp_way}
    rates: dict = {w: [] for w in ways}
    print(f"{len(ids)} prompts, max_new_tokens {args.max_new_tokens}, {args.max_batch} rows, sampling at temperature 1")
    for r in range(args.rounds):
        order = list(ways) if r % 2 == 0 else list(ways)[::-1]
        for w in order:
            tokens, seconds = ways[w](r)
            rates[w].append(tokens / seconds)
            print(f"  round {r}  {w:10s} {tokens:6d} tokens in {seconds:6.2f} s = {tokens / seconds:8.1f} tokens/s",
                  flush=True)
    best = {w: max(v) for w, v in rates.items()}
    print(f"rl: rollout tokens/s llmx/paddlenlp {best['llmx'] / best['paddlenlp']:.2f}x "
          f"(best rounds: {best['llmx']:.1f} vs {best['paddlenlp']:.1f})")

    run = tmp / "ppo"
    launch("stage=ppo", f"model.name_or_path={model_path}", "stage.reward=exact_match", "stage.data.eval=null",
           f"stage.train.max_steps={args.ppo_steps}", f"stage.rollout.max_new_tokens={args.max_new_tokens}",
           f"hydra.run.dir={run}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"rollout_s"' in x][1:]
    rollout_s, train_s = sum(r["rollout_s"] for r in rows), sum(r["train_s"] for r in rows)
    print(f"rl: PPO step (steps 2-{args.ppo_steps}, 16 prompts each, mean response "
          f"{np.mean([r['response_length'] for r in rows]):.1f} tokens): rollout {rollout_s / len(rows):.3f} s, "
          f"train {train_s / len(rows):.3f} s (log-probs, values, GAE, one update): rollout share "
          f"{rollout_s / (rollout_s + train_s):.2f}")


if __name__ == "__main__":
    main()
