"""The eval set dealt out to data-parallel replicas (llmx.engine.evaluation): every example counted exactly
once, and every replica runs as many batches of the same sizes (a pipeline: full ones)."""
from __future__ import annotations

import pytest

from llmx.engine.evaluation import HeldOutShare, held_out_batches


@pytest.mark.parametrize("examples,batch_size,replicas,full", [
    (64, 16, 1, False), (64, 5, 1, False), (64, 3, 2, False), (7, 4, 2, False), (5, 16, 4, False),
    (64, 8, 1, True), (10, 4, 2, True), (1, 2, 3, True)])
def test_every_example_counted_once_in_batches_of_equal_shapes(examples, batch_size, replicas, full):
    shares = [held_out_batches(examples, batch_size, replicas, rank, full) for rank in range(replicas)]
    counted = sorted(i for share in shares for batch in share for i, kept in batch if kept)
    assert counted == list(range(examples))
    assert len({tuple(len(b) for b in share) for share in shares}) == 1  # same batch sizes on every replica
    if full:
        assert all(len(b) == batch_size for share in shares for b in share)
    if replicas == 1 and not full:  # one process: plain consecutive batches, no copies
        assert shares[0] == [[(i, True) for i in range(k, min(k + batch_size, examples))]
                             for k in range(0, examples, batch_size)]


def test_an_uncounted_copy_has_every_label_ignored():
    share = HeldOutShare([{"input_ids": [5, 6, 7], "labels": [-100, 7, 8]}])
    assert share[(0, True)]["labels"] == [-100, 7, 8]
    assert list(share[(0, False)]["labels"]) == [-100, -100, -100]
    assert share[(0, False)]["input_ids"] == [5, 6, 7]
