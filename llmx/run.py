"""validate -> check inputs -> experiment dir + engine -> stage runner -> summary."""
from __future__ import annotations

import logging

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llmx.config import validate
from llmx.stages import get_runner, load_stage

log = logging.getLogger("llmx")


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    stage = load_stage(cfg.stage.runner)
    # Data problems surface here, as one line, before paddle is imported.
    inputs = stage.prepare(cfg) if hasattr(stage, "prepare") else None

    from llmx.engine.context import create_context  # the first heavy import

    ctx = create_context(cfg, HydraConfig.get().runtime.output_dir, inputs)
    summary = get_runner(cfg.stage.runner)(cfg, ctx)
    ctx.experiment.write_summary(summary)
    log.info("summary: %s", summary)
    return summary
