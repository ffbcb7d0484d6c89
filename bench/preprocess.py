"""Preprocess throughput: `llmx.data.preprocess` with 1 worker vs N workers, side by side.

    python bench/preprocess.py [--docs 20000] [--workers 2] [--rounds 2]

Generates a deterministic JSONL corpus in a temp dir, loads the bundled tiny tokenizer
once, then calls `preprocess()` in this process for each worker count, alternating
which goes first in each round. Prints tokens/s per run, the best of each, the ratio
N-workers / 1-worker, and checks that both wrote byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from llmx.schema import asset_path
from llmx.data.demo import WORDS
from llmx.data.preprocess import load_tokenizer, preprocess


def make_corpus(path: Path, docs: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            sentences = [f"The {rng.choice(WORDS)} sees {rng.randint(0, 999)} {rng.choice(WORDS)}s "
                         f"near the {rng.choice(WORDS)}." for _ in range(rng.randint(3, 12))]
            line = json.dumps({"text": " ".join(sentences)}) + "\n"
            size += len(line)
            f.write(line)
    return size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    tokenizer = load_tokenizer(asset_path("tiny_tokenizer"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        size = make_corpus(corpus, args.docs)
        print(f"corpus: {args.docs} documents, {size / 1e6:.1f} MB; {os.cpu_count()} CPUs; "
              f"workers 1 vs {args.workers}", flush=True)
        best: dict[int, float] = {}
        for r in range(args.rounds):
            order = (1, args.workers) if r % 2 == 0 else (args.workers, 1)
            for w in order:
                stats = preprocess([corpus], tmp / f"w{w}", tokenizer, workers=w)
                print(f"round {r + 1}  workers={w}  {stats.seconds:6.2f} s  {stats.tokens_per_s:10.0f} tokens/s  "
                      f"({stats.tokens} tokens)", flush=True)
                best[w] = max(best.get(w, 0.0), stats.tokens_per_s)
        same = all((tmp / f"w1{e}").read_bytes() == (tmp / f"w{args.workers}{e}").read_bytes()
                   for e in (".bin", ".idx"))
    print(f"best tokens/s: 1 worker {best[1]:.0f}, {args.workers} workers {best[args.workers]:.0f}")
    print(f"preprocess: {args.workers}-worker / 1-worker tokens/s ratio {best[args.workers] / best[1]:.2f}; "
          f"outputs byte-identical: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
