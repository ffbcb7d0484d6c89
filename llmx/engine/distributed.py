"""The distributed world of a multi-process run, set up from the layout alone (no Trainer).

paddle.distributed.launch (or Slurm, see llmx.launcher) started the processes; here
they form fleet's hybrid groups (dp, pp, sharding, tp) with the strategy PaddleNLP's
TrainingArguments would have built, so a tensor- or pipeline-parallel model can be
built by any stage, training or not. A stage that trains later creates
TrainingArguments, which find fleet initialised and keep it. On CPU the gloo
compatibility layer (llmx.compat.paddle) goes in first.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from llmx.engine.runtime import Runtime
from llmx.layout import Batching, Layout

log = logging.getLogger(__name__)
# The order PaddleNLP uses ("pp_first"): ranks of one tp group are neighbours.
TOPOLOGY_ORDER = ["dp", "pp", "sharding", "sep", "mp"]


def strategy(layout: Layout, batching: Optional[Batching], seed: int):
    """fleet's DistributedStrategy for the layout; `batching` sizes the pipeline's micro-batches."""
    from paddle.distributed import fleet

    s = fleet.DistributedStrategy()
    hybrid = {"dp_degree": layout.dp, "mp_degree": layout.tp, "pp_degree": layout.pp,
              "sharding_degree": layout.sharding, "sep_degree": 1, "order": TOPOLOGY_ORDER}
    if layout.pp > 1:
        micro, accum = (batching.micro_batch, batching.accum) if batching else (1, 1)
        # Padded batches change length from step to step: every send carries its shape
        # (p2p_cache_shape off), and the 1F1B schedule keeps one shape per micro-batch
        # (enable_dynamic_shape), which PaddleNLP's TrainingArguments do not expose. The interleaved
        # schedule (vpp > 1) needs cached shapes: its batches are padded to one length (fixed_length_batches).
        s.pipeline_configs = {"accumulate_steps": accum, "micro_batch_size": micro,
                              "enable_partial_send_recv": not layout.sequence_parallel,
                              "p2p_cache_shape": layout.vpp > 1}
        hybrid["pp_configs"] = {"delay_scale_loss": False, "dp_comm_overlap": False, "sharding_comm_overlap": False,
                                "enable_timer": False, "release_gradients": False, "overlap_p2p_comm": False,
                                "clear_every_step_cache": False, "use_batch_p2p_comm": True}
    if layout.tp > 1:
        s.tensor_parallel_configs = {"tensor_init_seed": seed}
    s.hybrid_configs = hybrid
    if layout.pp > 1 and layout.vpp == 1:
        s.hybrid_configs["pp_configs"].enable_dynamic_shape = True
    return s


_formed: Optional[tuple] = None  # (layout, batching) of the groups this process formed


def init_distributed(layout: Layout, runtime: Runtime, run_dir: Path, batching: Optional[Batching] = None,
                     seed: int = 0) -> None:
    """Form the hybrid groups of `layout` (a no-op in one process, or when this process already
    formed them for the same layout: several runs may share one process group)."""
    global _formed
    if runtime.world_size == 1 or _formed == (layout, batching):
        return
    if _formed is not None:
        raise RuntimeError(f"this process already formed the groups of {_formed}; fleet cannot be re-initialised")
    _formed = (layout, batching)
    if runtime.device == "cpu":
        from llmx.compat.paddle import install as install_cpu_parallel

        os.environ.setdefault("PADDLE_DISTRI_BACKEND", "gloo")  # the only CPU backend
        install_cpu_parallel(run_dir, runtime.rank)
    from paddle.distributed import fleet

    fleet.init(is_collective=True, strategy=strategy(layout, batching, seed))
    log.info("rank %d of %d: %s (sharding stage %d) on %s", runtime.rank, runtime.world_size, layout.describe(),
             layout.sharding_stage, "CPU (gloo)" if runtime.device == "cpu" else "GPU")


def fixed_length_batches(layout: Layout) -> bool:
    """Must every batch have one length? The interleaved pipeline schedule sends cached shapes."""
    return layout.pp > 1 and layout.vpp > 1


def hybrid_group():
    """fleet's HybridCommunicateGroup, or None in one process / plain data parallel."""
    import paddle.distributed as dist
    from paddle.distributed import fleet

    if dist.get_world_size() <= 1:
        return None
    try:
        return fleet.get_hybrid_communicate_group()
    except AttributeError:  # fleet not initialised
        return None


_barriers_passed = 0
BARRIER_TIMEOUT_S = 1800.0  # torch.distributed's default for gloo


def barrier(timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every rank is here, for as long as one rank's work may take.

    Not `dist.barrier()`: a gloo collective gives up after gloo's fixed 30 s (Paddle's
    ProcessGroupGloo exposes no timeout), so a rank still building its model, or rank 0
    writing a checkpoint of a real model, failed the others with `gloo ... TIMEOUT`. The
    ranks count themselves in at the job's TCP store instead, which waits as long as asked."""
    import time

    import paddle.distributed as dist
    from paddle.base import core

    global _barriers_passed
    world = dist.get_world_size()
    if world <= 1:
        return
    store = core.create_or_get_global_tcp_store()
    key = f"llmx/barrier/{_barriers_passed}"  # every rank passes the same barriers in the same order
    _barriers_passed += 1

    def wait_for_all(counter: str) -> None:
        count, deadline = store.add(counter, 1), time.monotonic() + timeout_s
        while count < world:
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmx: {world - count} of {world} ranks did not reach barrier {key} "
                                   f"within {timeout_s:.0f} s (a rank died or hangs: see its log in logs/)")
            time.sleep(0.02)
            count = store.add(counter, 0)

    wait_for_all(key)
    # Rank 0 hosts the store: it leaves only once every rank has seen the count, or a rank
    # still polling would lose the store when rank 0 exits right after the last barrier.
    if dist.get_rank() == 0:
        wait_for_all(f"{key}/seen")
    else:
        store.add(f"{key}/seen", 1)
