"""The context a stage runner receives: config, experiment dir, runtime, checked inputs."""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmx.console import quiet_libraries
from llmx.devices import math_threads
from llmx.engine.distributed import init_distributed
from llmx.engine.memory import mark_baseline
from llmx.engine.runtime import Runtime, init_runtime, seed_everything
from llmx.experiment import Experiment
from llmx.layout import Layout, train_batching


@dataclass
class Context:
    cfg: DictConfig
    experiment: Experiment
    runtime: Runtime
    layout: Layout
    inputs: Any  # what the stage's prepare(cfg) returned (parsed, checked data)
    log: logging.Logger


def guard_pickles(trust: bool) -> None:
    """Every pickle Paddle or PaddleNLP loads from now on builds data only (llmx.safe_pickle), unless the
    run says model.trust_pickle=true."""
    from llmx import safe_pickle
    from llmx.compat.paddle import restrict_unpickling
    from llmx.compat.paddlenlp import restrict_torch_unpickling

    restrict_unpickling()
    restrict_torch_unpickling()
    safe_pickle.set_trust(trust)


def create_context(cfg: DictConfig, run_dir: str, inputs: Any) -> Context:
    importlib.import_module("paddlenlp")  # its logger exists from here on: hand it to llmx.log
    mark_baseline()  # what the run adds from here is what summary.json's measured peak counts

    quiet_libraries(cfg.verbose)
    guard_pickles(cfg.model.trust_pickle)
    runtime = init_runtime(cfg.device, cfg.model.dtype, math_threads(cfg.runtime.threads))
    seed_everything(cfg.seed)
    experiment = Experiment(run_dir, writer=runtime.is_main).create()
    experiment.write_provenance(cfg.seed, runtime.world_size, runtime.device_names(),
                                {"threads_per_rank": runtime.threads,
                                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})
    layout = Layout.of(cfg.parallel)
    batching = train_batching(cfg) if OmegaConf.select(cfg, "stage.train") is not None else None
    init_distributed(layout, runtime, experiment.dir, batching, cfg.seed)
    return Context(cfg=cfg, experiment=experiment, runtime=runtime, layout=layout, inputs=inputs,
                   log=logging.getLogger("llmx"))
