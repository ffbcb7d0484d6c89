"""Faults during checkpoint writes (issue 26): SIGKILL at random moments of the writes, a full disk (a real,
small tmpfs), a checkpoint with a truncated file. Each ends in a relaunch that logs the uninterrupted run's
losses. The selection logic alone is tested paddle-free in tests/quick/test_checkpoint_selection.py.

A kill needs a process of its own per relaunch; interpreter start-up and paddle's import cost ~10 s each on a
loaded machine, so the relaunches are forked from one process that imported them once (multiprocessing's
forkserver). Each is still a fresh process running `launch.py` from its start: Hydra, validation, resume."""
from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import random
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FAST, REPO, read_json, read_jsonl, run_in_process, train_losses

from llmx.experiment import COMPLETE_MARKER, SLOW_WRITE_HOOK, Experiment

HERE = Path(__file__).parent
STEPS = 32  # the relaunches are killed during their first or second checkpoint write, before the run ends
KILLS = 20
PAUSE = 0.03  # seconds before each file of a checkpoint is sealed (llmx.experiment.SLOW_WRITE_HOOK)
SFT = ("stage=sft", *FAST, "stage.train.save_steps=1", "stage.train.logging_steps=1", "stage.eval.enabled=false")
PRELOAD = ["paddle", "paddlenlp.trainer", "paddlenlp.transformers", "visualdl", "hydra", "llmx.cli", "llmx.run",
           "llmx.engine.context", "llmx.engine.fit", "llmx.stages.sft", "test_checkpoint_faults"]


def launch_main(argv: list[str], log: str, env: dict) -> None:
    """`python launch.py <argv>` in a process forked from the forkserver; stdout and stderr to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    os.chdir(REPO)
    sys.argv = [str(REPO / "launch.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


@pytest.fixture(scope="module")
def relaunch():
    """relaunch(run_dir, *overrides, env={}) -> a started multiprocessing.Process running launch.py."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)

    def start(run: Path, *overrides: str, env: dict | None = None):
        proc = ctx.Process(target=launch_main, args=([f"hydra.run.dir={run}", *overrides],
                                                     str(run.parent / f"{run.name}.console"), env or {}))
        proc.start()
        return proc

    yield start
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # (the server would otherwise live until pytest exits)
    if stop is not None:
        stop()


def finished(proc, timeout: float = 300) -> int:
    proc.join(timeout)
    assert proc.exitcode is not None, "the run did not end"
    return proc.exitcode


@pytest.fixture(scope="module")
def uninterrupted(relaunch, tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "uninterrupted"
    assert finished(relaunch(run, *SFT, f"stage.train.max_steps={STEPS}")) == 0
    assert [s for s, _ in train_losses(run)] == list(range(1, STEPS + 1))
    return run


def assert_same_losses(run: Path, reference: Path, steps: int = STEPS) -> None:
    got, want = train_losses(run), dict(train_losses(reference))
    assert [s for s, _ in got] == list(range(1, steps + 1)), "metrics.jsonl must continue without gaps or repeats"
    for step, loss in got:
        assert loss == pytest.approx(want[step], abs=1e-6), f"step {step}"


def write_started(run: Path, step: int, after: float):
    """When a relaunch started at `after` (time.time()) began to write checkpoint `step`; None before it did."""
    try:
        if (Experiment(run).staging_dir() / f"checkpoint-{step}").stat().st_ctime >= after:
            return time.time()
    except FileNotFoundError:
        pass
    return None


def kill_phase(written: Path, run: Path) -> str:
    """Where in the write a kill landed, read from what it left."""
    step = int(written.name.split("-")[1])
    if (Experiment(run).checkpoint_dir(step) / COMPLETE_MARKER).exists() and not written.exists():
        return "after the rename"
    if (written / COMPLETE_MARKER).exists():
        return "sealed, not renamed"
    return "writing or sealing files"


def test_sigkill_at_20_random_moments_of_checkpoint_writes(relaunch, uninterrupted, tmp_path):
    """Run -> SIGKILL during a checkpoint write -> relaunch (killed again during its first write) ... 20 kills at
    seeded random moments of the writes (slowed by the test hook), then a relaunch runs to the end: its losses are
    the uninterrupted run's, and no kill left a checkpoint that resume refuses or picks half-written."""
    run, rng = tmp_path / "killed", random.Random(26)
    window = PAUSE * 16 + 0.3  # the 13 files of a tiny SFT checkpoint, the marker, the rename, `latest`; their writing
    phases: dict[str, int] = {}
    for kill in range(KILLS):
        resumable = Experiment(run, writer=False).latest_checkpoint() if run.exists() else None
        step = (Experiment.checkpoint_step(resumable) if resumable else 0) + rng.choice((1, 2))  # the write to kill
        assert step < STEPS
        started = time.time()
        proc = relaunch(run, *SFT, f"stage.train.max_steps={STEPS}", env={SLOW_WRITE_HOOK: str(PAUSE)})
        while (began := write_started(run, step, started)) is None:
            assert proc.is_alive(), f"relaunch {kill} ended before writing checkpoint {step}: see {run}.console"
            assert time.time() - started < 300
            time.sleep(0.002)
        time.sleep(max(0.0, began + rng.uniform(0, window) - time.time()))
        assert proc.is_alive(), f"relaunch {kill} ended before its kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        phase = kill_phase(Experiment(run).staging_dir() / f"checkpoint-{step}", run)
        phases[phase] = phases.get(phase, 0) + 1
        resumable = Experiment(run, writer=False).latest_checkpoint()
        assert resumable is None or Experiment(run).checkpoint_damage(resumable) is None
    print(f"\n{KILLS} kills landed: {phases}")
    assert phases.get("writing or sealing files", 0) + phases.get("sealed, not renamed", 0) >= KILLS // 4, phases

    assert finished(relaunch(run, *SFT, f"stage.train.max_steps={STEPS}")) == 0
    assert read_json(run / "summary.json")["resumed_from"].startswith("step-")
    assert_same_losses(run, uninterrupted)
    assert not list((run / "checkpoints").glob("damaged-*")) and "warning" not in (tmp_path / "killed.console").read_text()


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_bytes) -> a fresh tmpfs of that size (remount(size_bytes) resizes it); unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    state = {}

    def mount(size: int) -> Path:
        opts = f"size={size}"
        cmd = ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)] if not state else \
            ["mount", "-o", f"remount,{opts}", str(disk)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"a full disk is simulated with a small tmpfs, which needs root (mount): {out.stderr.strip()}")
        state["mounted"] = True
        return disk

    yield mount
    if state:
        subprocess.run(["umount", str(disk)], check=True)


def checkpoint_bytes(ckpt: Path) -> int:
    return sum(p.stat().st_size for p in ckpt.iterdir())


def test_a_full_disk_keeps_the_previous_checkpoint_and_a_relaunch_resumes(relaunch, uninterrupted, small_disk):
    """A run dir on a tmpfs that holds one checkpoint and a half: the second checkpoint's write fails, the run ends
    with one line, the first checkpoint stays; with room made, a relaunch resumes from it."""
    ckpt = checkpoint_bytes(Experiment(uninterrupted).checkpoint_dir(STEPS))
    run = small_disk(int(ckpt * 1.5) + (512 << 10)) / "run"
    args = (*SFT, "stage.train.save_steps=2", "stage.train.max_steps=4")
    assert finished(relaunch(run, *args)) == 2
    console = (run.parent / "run.console").read_text()
    line = (f"llmx: error: no space left on device while writing checkpoint step-4 to {run / 'checkpoints'}; "
            "the previous checkpoint step-2 is kept")
    assert line in console.splitlines() and "Traceback" not in console, console[-3000:]
    exp = Experiment(run)
    assert [p.name for p in exp.complete_checkpoints()] == ["step-2"] and exp.checkpoint_damage(exp.checkpoint_dir(2)) is None
    assert not list(exp.staging_dir().glob("*"))  # the partial write is gone
    assert read_json(run / "status.json")["status"] != "ok"

    small_disk(64 << 20)  # the user makes room
    assert finished(relaunch(run, *args)) == 0
    assert read_json(run / "summary.json")["resumed_from"] == "step-2"
    assert_same_losses(run, uninterrupted, steps=4)


def test_a_truncated_file_is_skipped_with_one_line_and_the_run_resumes_from_the_one_before(
        uninterrupted, tmp_path, caplog):
    run = tmp_path / "truncated"
    run_in_process(run, *SFT, "stage.train.max_steps=3", "stage.train.keep_checkpoints=0")
    damaged = Experiment(run).checkpoint_dir(3)
    weights = next(damaged.glob("model-*.safetensors"))
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmx"):
        summary = run_in_process(run, *SFT, "stage.train.max_steps=5", "stage.train.keep_checkpoints=0")
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("llmx") and r.levelno >= logging.WARNING]
    assert warnings == [f"checkpoint {damaged} is damaged ({weights.name} holds {size // 2} of its {size} bytes): "
                        "skipped, kept as damaged-step-3"]
    assert summary["resumed_from"] == "step-2"
    assert (run / "checkpoints" / "damaged-step-3" / weights.name).stat().st_size == size // 2  # never deleted
    assert_same_losses(run, uninterrupted, steps=5)


# ---------------------------------------------------------------------------------------------- the RL loop

GRPO = ("stage=grpo", "stage.reward=rl_rewards:uppercase", "stage.data.eval=null", "stage.rollout.prompts_per_step=8",
        "stage.rollout.max_new_tokens=8", "stage.train.save_steps=1", "stage.train.keep_checkpoints=0")


@pytest.fixture
def grpo(tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # rl_rewards
    return (*GRPO, f"model.name_or_path={tiny_model_dir}")


def rl_records(run: Path) -> dict:
    return {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if "reward_mean" in r}


def assert_same_rollouts(run: Path, reference: Path, steps: int) -> None:
    got, want = rl_records(run), rl_records(reference)
    assert sorted(got) == list(range(1, steps + 1))
    for step in got:
        for key in ("reward_mean", "policy_loss", "response_length"):
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_grpo_skips_a_truncated_checkpoint_and_survives_a_full_disk(grpo, tmp_path, small_disk, caplog):
    """The RL loop's checkpoints go through the same commit and selection: a truncated actor file is skipped with
    one line; a full disk ends the run with one line and keeps the previous checkpoint; both relaunches resume
    to the uninterrupted run's rollouts."""
    whole = tmp_path / "whole"
    run_in_process(whole, *grpo, "stage.train.max_steps=3")

    run = tmp_path / "truncated"
    run_in_process(run, *grpo, "stage.train.max_steps=2")
    actor = Experiment(run).checkpoint_dir(2) / "actor.safetensors"
    size = actor.stat().st_size
    os.truncate(actor, 100)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmx"):
        assert run_in_process(run, *grpo, "stage.train.max_steps=3")["resumed_from"] == "step-1"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("llmx")] == [
        f"checkpoint {actor.parent} is damaged (actor.safetensors holds 100 of its {size} bytes): "
        "skipped, kept as damaged-step-2"]
    assert_same_rollouts(run, whole, 3)

    ckpt = checkpoint_bytes(Experiment(whole).checkpoint_dir(3))
    full = small_disk(int(ckpt * 1.5) + (256 << 10)) / "run"
    from llmx.experiment import CheckpointWriteError

    with pytest.raises(CheckpointWriteError) as raised:
        run_in_process(full, *grpo, "stage.train.max_steps=3")
    failed = int(str(raised.value).split("checkpoint step-")[1].split(" ")[0])
    assert failed >= 2 and str(raised.value) == (
        f"{os.strerror(errno.ENOSPC).lower()} while writing checkpoint step-{failed} to {full / 'checkpoints'}; "
        f"the previous checkpoint step-{failed - 1} is kept")
    assert not list(Experiment(full).staging_dir().glob("*"))
    small_disk(64 << 20)
    assert run_in_process(full, *grpo, "stage.train.max_steps=3")["resumed_from"] == f"step-{failed - 1}"
    assert_same_rollouts(full, whole, 3)
