"""Zero padding (PaddleNLP's name for sequence packing): several encoded examples per sequence.

Examples (dicts with `input_ids` and `labels` as `SftEncoder.encode` makes them) are
placed greedily, first-fit decreasing, into sequences of at most `max_length` tokens.
Labels are already shifted per example (`labels[i]` is the token after `input_ids[i]`
*within its example*; the last one is the example's own last token), so concatenating
the per-example (input_ids, labels) pairs is exact: no position learns to predict the
next example's first token. Position ids restart at 0 at every example, and each
packed sequence records its example boundaries (`seq_lens`), from which the collator
builds a block-diagonal causal mask so attention stays inside each example.

numpy only (no paddle): packing runs before any heavy import and can be tested alone.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from llmx.errors import DataError


def pack_examples(examples: Sequence[dict], max_length: int) -> list[dict]:
    """First-fit decreasing bin packing; deterministic (ties keep dataset order).

    Returns one dict per packed sequence: `input_ids`, `labels`, `position_ids`
    (lists), `seq_lens` (tokens of each example, in order) and `example_ids` (the
    indices into `examples`, in the order they appear in the sequence)."""
    lengths = np.array([len(e["input_ids"]) for e in examples], dtype=np.int64)
    for i, (e, n) in enumerate(zip(examples, lengths)):
        if n > max_length:
            raise DataError(f"example {i}: {n} tokens, longer than the packing length {max_length}")
        if n == 0:
            raise DataError(f"example {i}: no tokens to pack")
        if len(e["labels"]) != n:
            raise DataError(f"example {i}: {n} input_ids but {len(e['labels'])} labels")
    order = np.argsort(-lengths, kind="stable")  # longest first; equal lengths in dataset order
    room = np.empty(len(examples), dtype=np.int64)  # free tokens of each open bin (at most one bin per example)
    bins: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room[:len(bins)] >= lengths[i])
        if len(fits):
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            room[b] = max_length
        bins[b].append(int(i))
        room[b] -= lengths[i]
    return [_concat(examples, sorted(ids)) for ids in bins]  # inside a sequence: dataset order


def _concat(examples: Sequence[dict], ids: list[int]) -> dict:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    seq_lens: list[int] = []
    for i in ids:
        n = len(examples[i]["input_ids"])
        input_ids += examples[i]["input_ids"]
        labels += examples[i]["labels"]
        position_ids += range(n)
        seq_lens.append(n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "seq_lens": seq_lens, "example_ids": ids}


def segment_bounds(seq_lens: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each example inside its packed sequence."""
    ends = np.cumsum(seq_lens).tolist()
    return list(zip([0] + ends[:-1], ends))


def packing_stats(packs: Sequence[dict], max_length: int) -> dict:
    """How full the packed sequences are, each counted at `max_length` tokens."""
    tokens = sum(len(p["input_ids"]) for p in packs)
    return {
        "sequences": len(packs),
        "examples": sum(len(p["seq_lens"]) for p in packs),
        "tokens": tokens,
        "non_pad_fraction": tokens / max(len(packs) * max_length, 1),
    }

