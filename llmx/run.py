"""validate -> check inputs -> experiment dir + engine -> stage runner -> summary."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llmx.config import validate
from llmx.stages import get_runner, load_stage

log = logging.getLogger("llmx")


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    stage = load_stage(cfg.stage.runner)
    # Data problems surface here, as one line, before paddle is imported.
    inputs = stage.prepare(cfg) if hasattr(stage, "prepare") else None

    from llmx import launcher

    if launcher.needs_launch(cfg):  # a multi-process layout from a plain shell: start the ranks, wait
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        launcher.launch(cfg, hydra_cfg, run_dir)
        summary_path = run_dir / "summary.json"
        return json.loads(summary_path.read_text()) if summary_path.exists() else {}
    launcher.join_launched_job()

    from llmx.engine.context import create_context  # the first heavy import

    ctx = create_context(cfg, HydraConfig.get().runtime.output_dir, inputs)
    summary = get_runner(cfg.stage.runner)(cfg, ctx)
    ctx.experiment.write_summary(summary)
    log.info("summary: %s", summary)
    return summary


def run_job(cfg: DictConfig) -> dict | None:
    """Hydra's task: run, and record the outcome in status.json. In a multirun a failed
    job is logged and recorded, and the sweep goes on (the sweep's end reports it)."""
    if cfg.plan:  # `plan=true`: print the memory estimate of this layout instead (no paddle, no run files)
        from llmx.plan import print_plan

        print_plan(cfg)
        return None
    from llmx.launcher import adopt_slurm_world, under_launcher
    from llmx.sweep import write_status

    rank_of_paddle_launch = under_launcher()
    adopt_slurm_world()  # Slurm tasks as ranks: before validation compares the world with the layout
    hydra_cfg = HydraConfig.get()
    run_dir, started = Path(hydra_cfg.runtime.output_dir), time.time()
    main_process = int(os.environ.get("PADDLE_TRAINER_ID", "0")) == 0  # other ranks leave the files to rank 0
    try:
        summary = run(cfg)
    except Exception as error:  # noqa: BLE001 - recorded, then re-raised or (multirun) absorbed
        if main_process:
            write_status(run_dir, started, error)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed: %s", error)
        return None
    if main_process:
        write_status(run_dir, started)
    if rank_of_paddle_launch:
        _leave_rank()
    return summary


def _leave_rank() -> None:
    """End a rank started by paddle.distributed.launch once all ranks are done, without
    Python's interpreter teardown: Paddle's destructors (seen with sharding stage 2 over
    gloo) sometimes abort there after the run has completed, which would fail the launch.
    Not for Slurm tasks: submitit must return the job's result from the process."""
    import paddle.distributed as dist

    from llmx.engine.cpu_parallel import write_counters

    write_counters()
    dist.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
