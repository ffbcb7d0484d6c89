"""The distributed world of a multi-process run (paddle.distributed.launch started it).

PaddleNLP's TrainingArguments initialises fleet (the hybrid dp/sharding/pp/tp groups and
the pipeline/sharding strategy) when it is created. We create them once here, from the
same single mapping the stages use (engine.trainer.training_arguments), so the groups
exist before a tensor- or pipeline-parallel model is built; the stage's own
TrainingArguments later find fleet initialised and keep it. On CPU the gloo
compatibility layer (engine.cpu_parallel) goes in first.
"""
from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from llmx.engine.runtime import Runtime
from llmx.experiment import Experiment

log = logging.getLogger(__name__)


def init_distributed(cfg: DictConfig, experiment: Experiment, runtime: Runtime) -> None:
    if runtime.world_size == 1:
        return
    if runtime.device == "cpu":
        from llmx.engine import cpu_parallel

        os.environ.setdefault("PADDLE_DISTRI_BACKEND", "gloo")  # the only CPU backend
        cpu_parallel.install(experiment.dir, runtime.rank)
    from llmx.engine.trainer import training_arguments

    args = training_arguments(cfg, experiment, runtime.device)
    p = cfg.parallel
    if p.pp > 1:
        # SFT batches are padded per batch, so micro-batches differ in length. With
        # `disable_p2p_cache_shape` (training_arguments) every send carries its shape, but the
        # 1F1B schedule still receives gradients into the *last* sent shape unless it keeps
        # one shape per micro-batch: its dynamic-shape mode, which PaddleNLP does not expose.
        from paddle.distributed import fleet

        fleet.fleet._user_defined_strategy.hybrid_configs["pp_configs"].enable_dynamic_shape = True
    log.info("rank %d of %d: dp=%d sharding=%d(stage %d) pp=%d tp=%d on %s", runtime.rank, runtime.world_size,
             args.data_parallel_degree, p.sharding, p.sharding_stage, p.pp, p.tp,
             "CPU (gloo)" if runtime.device == "cpu" else "GPU")
