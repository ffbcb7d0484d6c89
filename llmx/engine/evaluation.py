"""The Trainer's held-out loss as the mean over every target token of the eval set.

PaddleNLP's evaluation loop averages the batches' own means (weighted by their examples; a
pipeline's batch loss is itself the mean of its micro-batches' means), so a batch with few target
tokens weighs as much as one with many, and the result moves with the eval batch size and the
layout (demo eval set, untrained tiny model: 10.110 at batch 1, 9.828 at 16, token mean 9.800).
LlmxTrainerMixin instead adds up, batch by batch, the batch's mean times its target tokens and
the target tokens (`TokenTally`), over every data-parallel replica, and reports the quotient.

The loop gathers from every rank at every batch and a pipeline takes only full batches, so the
replicas must run as many batches of the same sizes: the eval set is dealt out here
(`held_out_batches`), topped up with copies whose labels are all ignored (`HeldOutShare`); such a
copy adds nothing to either sum, where the Trainer's own samplers count a repeated example twice.
"""
from __future__ import annotations

import numpy as np
from paddle.io import BatchSampler

from llmx.tokens import IGNORE_INDEX

Batch = list[tuple[int, bool]]  # (example index, counted)


def held_out_batches(examples: int, batch_size: int, replicas: int = 1, rank: int = 0,
                     full: bool = False) -> list[Batch]:
    """Replica `rank`'s eval batches: the set cut in consecutive batches of `batch_size`, dealt round
    robin to the replicas. Each round's batches are topped up with uncounted copies of example 0 to
    the round's largest size (to `batch_size` with `full`, as a pipeline needs); a replica left
    without a batch in the last round gets copies only. One process, not `full`: no copies."""
    cut = [list(range(k, min(k + batch_size, examples))) for k in range(0, examples, batch_size)]
    mine = []
    for first in range(0, len(cut), replicas):
        one_round = cut[first:first + replicas]
        size = batch_size if full else max(len(b) for b in one_round)
        ours = one_round[rank] if rank < len(one_round) else []
        mine.append([(i, True) for i in ours] + [(0, False)] * (size - len(ours)))
    return mine


class HeldOutSampler(BatchSampler):
    """`held_out_batches` as the Trainer's eval sampler (it reads `batch_size` off it)."""

    def __init__(self, dataset, batch_size: int, replicas: int, rank: int, full: bool) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.batches = held_out_batches(len(dataset), batch_size, replicas, rank, full)

    def __iter__(self):
        yield from self.batches

    def __len__(self) -> int:
        return len(self.batches)


class HeldOutShare:
    """The eval set as HeldOutSampler asks for it, by (index, counted): an uncounted copy has every
    label ignored."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, counted = key if isinstance(key, tuple) else (key, True)
        item = self.base[index]
        if counted:
            return item
        return {**item, "labels": np.full(len(item["labels"]), IGNORE_INDEX, dtype="int64")}


def target_tokens(inputs: dict) -> int:
    """The batch's target (loss-bearing) tokens; 0 for a batch without token `labels` (preference
    batches: their losses are not token means)."""
    labels = inputs.get("labels") if isinstance(inputs, dict) else None
    return int((labels != IGNORE_INDEX).sum()) if hasattr(labels, "shape") else 0


class TokenTally:
    """Sum of token losses and count of target tokens, batch by batch."""

    def __init__(self) -> None:
        self.loss_sum, self.tokens = 0.0, 0

    def add(self, batch_mean, tokens: int) -> None:
        if tokens:  # a batch of uncounted copies has a mean of 0 (or nan): it adds nothing
            self.loss_sum += float(batch_mean) * tokens
            self.tokens += tokens

    def totals(self) -> np.ndarray:
        return np.array([self.loss_sum, float(self.tokens)], dtype="float64")
