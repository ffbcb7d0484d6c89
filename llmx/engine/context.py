"""The context a stage runner receives: config, experiment dir, runtime, checked inputs."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from llmx.engine.distributed import init_distributed
from llmx.engine.runtime import Runtime, init_runtime, seed_everything
from llmx.experiment import Experiment


@dataclass
class Context:
    cfg: DictConfig
    experiment: Experiment
    runtime: Runtime
    inputs: Any  # what the stage's prepare(cfg) returned (parsed, checked data)
    log: logging.Logger


def _share_log_file_with_paddlenlp() -> None:
    """PaddleNLP's logger does not propagate; give it Hydra's file handler so
    Trainer messages land in llmx.log too."""
    paddlenlp_logger = logging.getLogger("PaddleNLP")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler not in paddlenlp_logger.handlers:
            paddlenlp_logger.addHandler(handler)


def create_context(cfg: DictConfig, run_dir: str, inputs: Any) -> Context:
    runtime = init_runtime(cfg.device, cfg.model.dtype)
    seed_everything(cfg.seed)
    experiment = Experiment(run_dir, writer=runtime.is_main)
    experiment.write_provenance(cfg.seed, runtime.world_size, runtime.device_names())
    init_distributed(cfg, experiment, runtime)
    _share_log_file_with_paddlenlp()
    return Context(cfg=cfg, experiment=experiment, runtime=runtime, inputs=inputs, log=logging.getLogger("llmx"))
