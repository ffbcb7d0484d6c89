"""Continuous batching vs static batching vs PaddleNLP's `generate`, side by side on one workload.

One random-init Llama (--hidden, --layers; the bundled tokenizer) and one mixed workload: --requests
prompts with lognormal lengths (median --median-prompt tokens) and per-request max_new_tokens, also
lognormal (median --median-new, sigma 1, clipped to [1, --max-new]: most answers short, a few long, as
chat traffic is). eos is ignored, so every request generates exactly its budget and the three ways do
the same useful work. All requests arrive at once. Three ways, each with
--max-batch rows:
- continuous: llmx's engine (KV cache; a request joins as soon as a row frees, finished rows leave);
- static: the same engine with `static_batching=True`: a batch of --max-batch requests is admitted
  only when the previous batch is done, and it waits for its longest member;
- paddlenlp: `model.generate` (greedy, KV cache) batch by batch, left-padded, each batch run to its
  longest max_new_tokens and cut per request afterwards.
Printed per way: output tokens/s (requested tokens only), p50/p99 time to first token (for
`paddlenlp`, whose generate returns whole batches, the time its batch came back), and wall time;
then `infer: continuous/static tokens/s ratio ...x (target >= 2x), p99 TTFT ...`.

    python bench/serving.py                     # ~4 min on 2 shared cores
    python bench/serving.py --hidden 512 --layers 4 --requests 128 --max-batch 32 --device gpu
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--median-prompt", type=float, default=48.0)
    p.add_argument("--median-new", type=float, default=24.0)
    p.add_argument("--max-new", type=int, default=192)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for paddle's kernels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ways", default="continuous,static,paddlenlp")
    return p.parse_args()


def main() -> None:
    args = parse()
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import paddle
    from paddlenlp.transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmx.schema import asset_path
    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams
    from llmx.tokens import pad_batch

    paddle.set_device(args.device)
    paddle.set_num_threads(args.threads) if hasattr(paddle, "set_num_threads") else None
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    paddle.seed(args.seed)
    heads = max(args.hidden // 64, 1)
    # initializer_range wider than the default: peaked next-token distributions, no near-ties for float
    # rounding to flip between batch shapes, so the ways can be compared token for token
    config = LlamaConfig(vocab_size=512, initializer_range=0.2, hidden_size=args.hidden,
                         intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config)
    model.eval()
    rng = np.random.RandomState(args.seed)
    lengths = np.clip(rng.lognormal(np.log(args.median_prompt), 0.8, args.requests), 4, 1024).astype(int)
    prompts = [list(rng.randint(4, 512, n)) for n in lengths]
    budgets = [int(b) for b in np.clip(rng.lognormal(np.log(args.median_new), 1.0, args.requests), 1, args.max_new)]
    useful = sum(budgets)
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers; {args.requests} requests, prompts "
          f"{lengths.min()}-{lengths.max()} tokens (median {int(np.median(lengths))}), new tokens "
          f"{min(budgets)}-{max(budgets)} ({useful} in all); {args.max_batch} rows; device {args.device}, "
          f"{args.threads} thread(s)")

    def engine_way(static: bool):
        engine = dynamic_engine(model, tokenizer, max_batch=args.max_batch, static_batching=static)
        params = [SamplingParams(max_new_tokens=int(b), ignore_eos=True) for b in budgets]
        start = time.perf_counter()
        reqs = engine.generate(prompts, params)
        wall = time.perf_counter() - start
        assert [len(r.tokens) for r in reqs] == budgets
        return wall, [r.first_token_at - start for r in reqs], [r.tokens for r in reqs]

    def paddlenlp_way():
        start = time.perf_counter()
        ttft, outputs = [], []
        with paddle.no_grad():
            for i in range(0, args.requests, args.max_batch):
                chunk = pad_batch([{"input_ids": p} for p in prompts[i:i + args.max_batch]], tokenizer.pad_token_id,
                                  left=True)
                mask = chunk["attention_mask"]
                out = model.generate(input_ids=paddle.to_tensor(chunk["input_ids"]), attention_mask=paddle.to_tensor(mask),
                                     position_ids=paddle.to_tensor(np.clip(mask.cumsum(-1) - 1, 0, None)),
                                     max_new_tokens=int(max(budgets[i:i + args.max_batch])),
                                     min_new_tokens=int(max(budgets[i:i + args.max_batch])),
                                     decode_strategy="greedy_search", eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)[0].numpy().tolist()
                done = time.perf_counter() - start
                for row, b in zip(out, budgets[i:i + args.max_batch]):
                    outputs.append(row[:b])
                    ttft.append(done)
        return time.perf_counter() - start, ttft, outputs

    results = {}
    ways = args.ways.split(",")
    for way in ways:
        wall, ttft, outputs = {"continuous": lambda: engine_way(False), "static": lambda: engine_way(True),
                               "paddlenlp": paddlenlp_way}[way]()
        results[way] = (wall, np.percentile(ttft, 50), np.percentile(ttft, 99), outputs)
    print(f"{'way':<12}{'tokens/s':>10}{'p50 TTFT s':>12}{'p99 TTFT s':>12}{'wall s':>9}")
    for way, (wall, p50, p99, _) in results.items():
        print(f"{way:<12}{useful / wall:>10.1f}{p50:>12.3f}{p99:>12.3f}{wall:>9.2f}")
    if "continuous" in results and "static" in results:
        same = results["continuous"][3] == results["static"][3]
        c, s = results["continuous"], results["static"]
        print(f"serving: continuous/static tokens/s ratio {s[0] / c[0]:.2f}x (target >= 2x), p99 TTFT "
              f"{c[2]:.3f} s vs {s[2]:.3f} s (target: lower); same greedy tokens: {same}")
    if "continuous" in results and "paddlenlp" in results:
        c, g = results["continuous"], results["paddlenlp"]
        same = c[3] == g[3]
        print(f"serving: continuous/paddlenlp-generate tokens/s ratio {g[0] / c[0]:.2f}x, p99 TTFT {c[2]:.3f} s vs "
              f"{g[2]:.3f} s; same greedy tokens: {same} (where eos is a row's argmax they part: generate's "
              f"min_new_tokens masks eos, the engine's ignore_eos keeps it)")


if __name__ == "__main__":
    main()
