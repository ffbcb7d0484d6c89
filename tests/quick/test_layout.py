"""llmx.layout: the one place for processes, batches and samples of a layout (paddle-free)."""
from __future__ import annotations

import pytest
from helpers import compose

from llmx.layout import Layout, batching, batching_problem, train_batching


@pytest.mark.parametrize("batch,accum,dp,sharding,micro,per_rank", [
    (16, 1, 1, 1, 16, 1),  # one process: micro-batch = batch_size
    (16, 1, 2, 1, 8, 1),  # two replicas slice each micro-batch
    (8, 2, 2, 1, 8, 1),  # ... or take whole micro-batches when they divide grad_accum
    (4, 4, 1, 2, 4, 2),  # sharding replicas count like dp ones
    (4, 8, 2, 2, 4, 2),
    (12, 3, 2, 1, 6, 3),  # neither divides the other way: slices of every micro-batch
])
def test_batching_keeps_the_global_batch(batch, accum, dp, sharding, micro, per_rank):
    layout = Layout(dp=dp, sharding=sharding, sharding_stage=1 if sharding > 1 else 0)
    b = batching(batch, accum, layout)
    assert (b.micro_batch, b.accum, b.replicas) == (micro, per_rank, dp * sharding)
    assert b.global_batch == batch * accum == b.micro_batch * b.accum * b.replicas
    assert b.samples(10) == 10 * batch * accum  # what 10 steps consume, whatever the layout


def test_tensor_and_pipeline_ranks_do_not_split_the_batch():
    b = batching(8, 2, Layout(tp=2, pp=2))
    assert (b.micro_batch, b.accum, b.replicas, b.pipeline_eval_batch) == (8, 2, 1, 16)
    assert Layout(dp=2, tp=2, pp=2, sharding=2, sharding_stage=1).world == 16
    assert Layout(tp=2).model_parallel and not Layout(dp=4).model_parallel


def test_batching_problem_names_what_to_divide():
    assert batching_problem(3, 1, Layout(dp=2)) == ("must divide stage.train.grad_accum (1) or stage.train.batch_size (3): "
                                                   "the global batch stays batch_size*grad_accum")
    assert batching_problem(4, 1, Layout(dp=2)) is None and batching_problem(3, 2, Layout(dp=2)) is None


def test_from_a_composed_config():
    cfg = compose("parallel=dp2", "stage.train.batch_size=4", "stage.train.grad_accum=4")
    assert Layout.of(cfg.parallel) == Layout(dp=2)
    b = train_batching(cfg)
    assert (b.micro_batch, b.accum, b.global_batch) == (4, 2, 16)
