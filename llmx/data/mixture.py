"""Mixing several data sets into one (paddle-free).

Without weights the mixture is every example of every set, in order. With weights it keeps the total size
(the sum of the sets' sizes) and gives each set its share of it, so a small set with a large weight is
upsampled (drawn again, from a fresh shuffle, once it is used up) and a large one with a small weight is
subsampled; the mixture is then shuffled, so the sets interleave. The same seed gives the same mixture.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from llmx.errors import DataError
from llmx.schema.data import check_weights  # (the rule is the schema's: re-exported here)


def counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Each set's number of examples: its weight's share of sum(sizes), rounded by largest remainder so the
    counts add up to sum(sizes) exactly (ties go to the earlier set)."""
    total = sum(sizes)
    exact = [total * w / sum(weights) for w in weights]
    out = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in by_remainder[:total - sum(out)]:
        out[i] += 1
    return out


def _draw(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n indices into a set of `size`: a shuffle of it, then another, ... (each example at most once per pass)."""
    passes = [rng.permutation(size) for _ in range(-(-n // size))]
    return np.concatenate(passes)[:n] if passes else np.zeros(0, dtype=np.int64)


def mix(sets: Sequence[Sequence], weights: Optional[Sequence[float]] = None, seed: int = 0) -> list:
    """One list from `sets`: without weights their concatenation; with weights (checked by check_weights'
    rule) counts(sizes, weights) examples of each set, drawn from seeded shuffles, in a seeded order."""
    if weights is None:
        return [example for examples in sets for example in examples]
    check_weights(weights, len(sets), "weights")
    sizes = [len(s) for s in sets]
    wanted = counts(sizes, weights)
    for i, (size, n) in enumerate(zip(sizes, wanted)):
        if n and not size:
            raise DataError(f"data set {i} is empty but its weight ({weights[i]}) asks for {n} examples")
    # One independent stream per set and one for the order: a set's draw does not move when another changes.
    *streams, shuffle = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(sets) + 1)]
    picked = [sets[i][j] for i, n in enumerate(wanted) for j in _draw(n, sizes[i], streams[i])]
    order = shuffle.permutation(len(picked))
    return [picked[k] for k in order]
