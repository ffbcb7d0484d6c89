"""validate -> check inputs -> experiment dir + engine -> stage runner -> summary."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from llmx.console import quiet_libraries, say, summary_lines
from llmx.errors import UserError
from llmx.experiment import Experiment
from llmx.stages import validate

log = logging.getLogger("llmx")


def wants_more(cfg: DictConfig, done: dict) -> bool:
    """Does this config ask a finished run for more training than it did?"""
    train = OmegaConf.select(cfg, "stage.train")
    if train is None or "steps" not in done:
        return False
    if train.max_steps > 0:
        return train.max_steps > done["steps"]
    return train.epochs > done.get("epoch", 0) + 1e-9


def run(cfg: DictConfig, run_dir: Path, announce: bool = True) -> dict | None:
    """The job; None when `run_dir` holds a finished run that this config asks nothing more of."""
    stage = validate(cfg)
    done = Experiment(run_dir, writer=False).completed_summary()
    if done is not None and not wants_more(cfg, done):
        say("%s is complete (%s steps): nothing to do (raise stage.train.max_steps to continue it, "
            "or choose another hydra.run.dir)", run_dir, done.get("steps", "all"))
        return None
    # Data problems surface here, as one line, before paddle is imported.
    inputs = stage.prepare(cfg) if hasattr(stage, "prepare") else None
    if announce:
        choices = HydraConfig.get().runtime.choices
        say("llmx %s: model=%s parallel=%s -> %s", choices.get("stage"), choices.get("model"), choices.get("parallel"),
            run_dir)

    from llmx import launcher

    if launcher.needs_launch(cfg):  # a multi-process layout from a plain shell: start the ranks, wait
        launcher.launch(cfg, HydraConfig.get(), run_dir)
        summary_path = run_dir / "summary.json"
        return json.loads(summary_path.read_text()) if summary_path.exists() else {}
    launcher.join_launched_job()

    from llmx.engine.context import create_context  # the first heavy import

    summary = run_stage(stage, cfg, create_context(cfg, str(run_dir), inputs))
    log.debug("summary: %s", summary)
    return summary


def run_stage(stage, cfg: DictConfig, ctx) -> dict:
    """Run the stage module and write its summary, completed with what the engine records of every run
    (the fused kernels that ran, with model.fused_ops auto or on). The chosen trackers (the `logger` group)
    are open meanwhile: they get the config, every metrics.jsonl record and the summary, and are closed
    when the run ends or fails."""
    from llmx.engine.model import run_facts

    exp, summary = ctx.experiment, None
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    exp.open_trackers(OmegaConf.to_container(cfg.logger, resolve=True) if "logger" in cfg else {},
                      OmegaConf.to_container(cfg, resolve=True), sweep)
    try:
        summary = {**stage.run(cfg, ctx), **run_facts()}
        summary.update(memory_record(cfg, ctx))
        exp.write_summary(summary)
    finally:
        exp.close_trackers(summary)
    return summary


def memory_record(cfg: DictConfig, ctx) -> dict:
    """The run's measured peak per rank (llmx.engine.memory) beside `plan`'s figure for its device (llmx.plan),
    for a training stage: memory_plan_gib / memory_peak_gib are the busiest rank's, the _per_rank lists every
    rank's (its pipeline stage's plan, for a rank that writes the checkpoint or one that does not). Every rank calls this (it gathers the peaks)."""
    from llmx.engine.distributed import hybrid_group
    from llmx.engine.memory import peaks_per_rank

    runtime = ctx.runtime
    hcg = hybrid_group()
    peaks, stages, data_ranks = peaks_per_rank(runtime.device, runtime.world_size, hcg.get_stage_id() if hcg else 0,
                                               hcg.get_data_parallel_rank() if hcg else 0)
    record = {"memory_measured": "max_memory_allocated" if runtime.device == "gpu" else "peak RSS above import baseline",
              "memory_peak_gib_per_rank": [None if p is None else round(p, 3) for p in peaks]}
    if runtime.device == "cpu":
        from llmx.engine.memory import tensors_peak_gib

        tensors = tensors_peak_gib()
        if tensors is not None:
            record["memory_tensors_peak_gib"] = round(tensors, 3)  # this rank's (rank 0's in summary.json)
    known = [p for p in peaks if p is not None]
    if known:
        record["memory_peak_gib"] = round(max(known), 3)
    if OmegaConf.select(cfg, "stage.train") is not None:
        from llmx.plan import estimate

        plan = estimate(cfg, device=runtime.device)
        writing, other = plan["per_pipeline_stage_gib"], plan["per_pipeline_stage_gib_not_writing"]
        record["memory_plan_gib_per_rank"] = [round((writing if dp == 0 else other)[s], 3)
                                              for s, dp in zip(stages, data_ranks)]
        record["memory_plan_gib"] = round(max(writing), 3)
    return record


def run_job(cfg: DictConfig) -> dict | None:
    """Hydra's task: run, and record the outcome in status.json. In a multirun a failed
    job is logged and recorded, and the sweep goes on (the sweep's end reports it)."""
    if cfg.plan:  # `plan=true`: print the memory estimate of this layout instead (no paddle, no run files)
        from llmx.plan import print_plan

        _discard_unused_run_dir(Path(HydraConfig.get().runtime.output_dir))
        print_plan(cfg)
        return None
    from llmx.launcher import adopt_slurm_world, under_launcher
    from llmx.search import enter_trial
    from llmx.sweep import write_status

    quiet_libraries(cfg.verbose)
    rank_of_paddle_launch = under_launcher()
    adopt_slurm_world()  # Slurm tasks as ranks: before validation compares the world with the layout
    hydra_cfg = HydraConfig.get()
    enter_trial(hydra_cfg)  # a trial of a search (hydra/sweeper=llmx_search) reports to its study
    run_dir, started = Path(hydra_cfg.runtime.output_dir), time.time()
    main_process = int(os.environ.get("PADDLE_TRAINER_ID", "0")) == 0  # other ranks leave the files to rank 0
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    fresh = Experiment(run_dir, writer=False).ran_nothing()
    try:
        summary = run(cfg, run_dir, announce=main_process and not rank_of_paddle_launch)
    except Exception as error:  # noqa: BLE001 - recorded, then re-raised or (multirun) absorbed
        # A config or data error found before anything ran: nothing to record in a single run,
        # and a directory this job created is removed (a typo leaves nothing behind).
        early = isinstance(error, UserError) and Experiment(run_dir, writer=False).ran_nothing()
        if early and fresh and not multirun:
            _discard_unused_run_dir(run_dir)
        elif main_process and (multirun or not early):
            write_status(run_dir, started, error)
        if not multirun:
            raise
        log.exception("job failed: %s", error)
        return None
    if summary is None:  # a finished run, nothing more asked of it
        return None
    if main_process:
        write_status(run_dir, started)
        if not rank_of_paddle_launch:
            for line in summary_lines(summary, run_dir, time.time() - started):
                say(line)
    if rank_of_paddle_launch:
        _leave_rank()
    return summary


def _discard_unused_run_dir(run_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra wrote before the job (and its empty parents
    up to the working directory): a run that never started leaves no directory behind."""
    if not Experiment(run_dir, writer=False).ran_nothing():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's file handler holds llmx.log open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / "llmx.log").unlink(missing_ok=True)
    cwd, path = Path.cwd().resolve(), run_dir.resolve()
    while path != cwd:
        try:
            path.rmdir()
        except OSError:  # not empty: someone else's files
            break
        path = path.parent
        if cwd not in path.parents:  # parents only up to the working directory (outputs/<stage>/<model>/)
            break


def _leave_rank() -> None:
    """End a rank started by paddle.distributed.launch once all ranks are done, without
    Python's interpreter teardown: Paddle's destructors (seen with sharding stage 2 over
    gloo) sometimes abort there after the run has completed, which would fail the launch.
    Not for Slurm tasks: submitit must return the job's result from the process."""
    from llmx.compat.paddle import write_counters
    from llmx.engine.distributed import barrier

    write_counters()
    barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
