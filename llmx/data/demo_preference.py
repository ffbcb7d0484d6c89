"""Generate the bundled preference data from the SFT demo tasks (llmx.data.demo).

    python -m llmx.data.demo_preference [--out DIR]      # default: the package's llmx/assets/

Chosen = the task's correct answer; rejected = a plausible wrong one (the near misses a
tiny model actually makes: a sum off by a little, the word not reversed, the wrong case,
the last letter for the first). Answers are exact strings, so a model's preference is
checkable. Held out: the eval files use exactly the SFT eval prompts (never in SFT train,
nor in the preference train files), so an SFT -> DPO recipe is measured on unseen prompts.
Outputs, relative to --out (byte-identical on every run, fixed seeds):

    demo/dpo_train.jsonl  1000 {"src", "tgt", "response": [a, b], "sort": [i, j]} (order shuffled)
    demo/dpo_eval.jsonl   64, one per SFT eval line
    demo/kto_train.jsonl  1000 {"src", "tgt", "response": [a], "sort": [1|0]}, half desirable
    demo/kto_eval.jsonl   128: the right and a wrong answer to each SFT eval prompt
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from llmx.data.demo import SEED, WORDS, make_example, make_sft, write_jsonl

N_TRAIN = 1000


def wrong_answer(src: str, tgt: str, rng: random.Random) -> str:
    """A plausible wrong answer to the demo task `src` whose correct answer is `tgt`."""
    if src.startswith("add "):
        return str(int(tgt) + rng.choice([-10, -2, -1, 1, 2, 10]) if int(tgt) >= 10 else int(tgt) + rng.choice([1, 2, 10]))
    if src == "upper it":  # second turn of a conversation: the first answer, unchanged
        return tgt.lower()
    if src == "reverse it":
        return tgt[::-1]
    word = src.split()[-1]
    if src.startswith("reverse"):
        return word if word != tgt else word[1:] + word[0]  # not reversed (a palindrome: rotated)
    if src.startswith("copy"):
        return word[::-1] if word[::-1] != word else rng.choice([w for w in WORDS if w != word])
    if src.startswith("upper"):
        return word.capitalize()
    if src.startswith("first letter"):
        return word[-1] if word[-1] != word[0] else word[1]
    raise ValueError(f"no wrong answer for {src!r}")


def _pointwise_parts(ex: dict) -> tuple[list[str], list[str], str]:
    """(src turns, earlier tgt turns, the answer to the last src) of an SFT example."""
    src = ex["src"] if isinstance(ex["src"], list) else [ex["src"]]
    tgt = ex["tgt"] if isinstance(ex["tgt"], list) else [ex["tgt"]]
    return src, tgt[:-1], tgt[-1]


def dpo_line(ex: dict, rng: random.Random) -> dict:
    src, history, answer = _pointwise_parts(ex)
    wrong = wrong_answer(src[-1], answer, rng)
    # Either order: readers must sort by `sort`, not by position.
    if rng.random() < 0.5:
        return {"src": src, "tgt": history, "response": [answer, wrong], "sort": [1, 0]}
    return {"src": src, "tgt": history, "response": [wrong, answer], "sort": [0, 1]}


def kto_line(ex: dict, rng: random.Random, desirable: bool) -> dict:
    src, history, answer = _pointwise_parts(ex)
    return {"src": src, "tgt": history, "response": [answer if desirable else wrong_answer(src[-1], answer, rng)],
            "sort": [1 if desirable else 0]}


def make_preference(rng: random.Random) -> dict[str, list[dict]]:
    _, sft_eval = make_sft(random.Random(SEED))  # the SFT eval split, exactly as llmx.data.demo makes it
    held_out = {json.dumps(ex["src"]) for ex in sft_eval} | {
        (ex["src"] if isinstance(ex["src"], str) else ex["src"][0]) for ex in sft_eval}
    train = []
    while len(train) < N_TRAIN:
        ex = make_example(rng)
        first = ex["src"] if isinstance(ex["src"], str) else ex["src"][0]
        if json.dumps(ex["src"]) not in held_out and first not in held_out:
            train.append(ex)
    return {
        "dpo_train": [dpo_line(ex, rng) for ex in train],
        "dpo_eval": [dpo_line(ex, rng) for ex in sft_eval],
        "kto_train": [kto_line(ex, rng, desirable=rng.random() < 0.5) for ex in train],
        # both answers to every held-out prompt: the desirable-vs-undesirable gap compares like with like
        "kto_eval": [kto_line(ex, rng, desirable=d) for ex in sft_eval for d in (True, False)],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets")
    args = p.parse_args(argv)
    files = make_preference(random.Random(SEED + 2))
    for name, rows in files.items():
        write_jsonl(args.out / "demo" / f"{name}.jsonl", rows)
    print(", ".join(f"{len(rows)} {name}" for name, rows in files.items()) + f" lines under {args.out / 'demo'}")


if __name__ == "__main__":
    main()
