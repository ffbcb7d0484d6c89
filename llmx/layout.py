"""Layout arithmetic, in one place (paddle-free): processes, batches, samples.

`stage.train.batch_size * stage.train.grad_accum` samples make one optimizer step
(the global batch), whatever the layout. The dp*sharding data-parallel replicas share
it: when they divide grad_accum each replica takes whole micro-batches of batch_size
(then every layout sums the very same micro-batch losses as one process), otherwise
each takes a slice of every micro-batch. Tensor- and pipeline-parallel ranks of one
replica read the same data. The trainer, `plan`, validation and every stage take
their numbers from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Layout:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    sharding: int = 1
    sharding_stage: int = 0
    vpp: int = 1
    sequence_parallel: bool = False

    @classmethod
    def of(cls, parallel: Any) -> "Layout":
        """From `cfg.parallel` (a DictConfig or anything with those attributes)."""
        return cls(**{k: getattr(parallel, k) for k in cls.__dataclass_fields__})

    @property
    def world(self) -> int:
        """Processes the layout needs: one per (dp, sharding, pp, tp) coordinate."""
        return self.dp * self.tp * self.pp * self.sharding

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: ranks that read different data."""
        return self.dp * self.sharding

    @property
    def model_parallel(self) -> bool:
        """Does each rank hold only a part of the model?"""
        return self.tp > 1 or self.pp > 1

    def describe(self) -> str:
        return f"dp={self.dp} tp={self.tp} pp={self.pp} sharding={self.sharding}"


@dataclass(frozen=True)
class Batching:
    """How one optimizer step's samples are cut under a layout."""

    global_batch: int  # samples per optimizer step
    micro_batch: int  # samples per forward on one rank
    accum: int  # micro-batches per rank per step (a pipeline's micro-batches)
    replicas: int

    def samples(self, steps: int) -> int:
        """Samples `steps` optimizer steps consume: the same for every layout."""
        return steps * self.global_batch

    @property
    def pipeline_eval_batch(self) -> int:
        """A pipeline evaluates a batch as its training micro-batches (Paddle checks the size)."""
        return self.micro_batch * self.accum


def batching(batch_size: int, grad_accum: int, layout: Layout) -> Batching:
    r = layout.replicas
    if grad_accum % r == 0:
        micro, accum = batch_size, grad_accum // r
    else:
        micro, accum = batch_size // r, grad_accum
    return Batching(global_batch=batch_size * grad_accum, micro_batch=micro, accum=accum, replicas=r)


def batching_problem(batch_size: int, grad_accum: int, layout: Layout) -> Optional[str]:
    """Why this batch cannot be shared by the layout's replicas, or None."""
    r = layout.replicas
    if grad_accum % r == 0 or batch_size % r == 0:
        return None
    return (f"must divide stage.train.grad_accum ({grad_accum}) or stage.train.batch_size ({batch_size}): "
            "the global batch stays batch_size*grad_accum")


def train_batching(cfg: Any) -> Batching:
    """The batching of a config with `stage.train` and `parallel`."""
    t = cfg.stage.train
    return batching(t.batch_size, t.grad_accum, Layout.of(cfg.parallel))
