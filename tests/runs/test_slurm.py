"""A real Slurm cluster (one node, started by .ci/slurm-up) runs llmx jobs through
`hydra/launcher=submitit_slurm`: each job of a sweep gets the Slurm tasks its own layout needs
(the tasks are its ranks), and a job that reaches its time limit is requeued and resumes."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import time

import pytest
from helpers import FAST, REPO, launch, read_json, read_jsonl, train_losses


def _slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and bool(re.search(r"^(idle|mixed|allocated|completing)$", out.stdout, re.M))


needs_slurm = pytest.mark.skipif(not _slurm_is_up(), reason="no Slurm node up here: run .ci/slurm-up (needs root)")

RUN = [*FAST, "stage.train.max_steps=4", "stage.train.logging_steps=1", "stage.eval.enabled=false",
       "stage.train.save_steps=100", "stage.train.batch_size=4", "stage.train.grad_accum=2"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Per-step losses of RUN as one process from a plain shell."""
    run = tmp_path_factory.mktemp("reference") / "single"
    launch(f"hydra.run.dir={run}", *RUN)
    losses = train_losses(run)
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    return losses


def _same_losses(run, reference) -> None:
    got = train_losses(run)
    assert [s for s, _ in got] == [s for s, _ in reference], run
    for (step, a), (_, b) in zip(got, reference):
        assert a == pytest.approx(b, rel=1e-5), f"{run} step {step}: a Slurm layout must match one process"


@needs_slurm
def test_sweep_gives_each_job_the_tasks_of_its_layout(tmp_path, one_process):
    """No tasks_per_node given: single, dp2 and tp2pp2 run as 1, 2 and 4 Slurm tasks, one rank each."""
    sweep = tmp_path / "sweep"
    launch("-m", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10", *RUN,
           "parallel=single,dp2,tp2pp2")
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        ("0", "parallel=single", "ok"), ("1", "parallel=dp2", "ok"), ("2", "parallel=tp2pp2", "ok")]
    asked = sorted(int(re.search(r"--ntasks-per-node=(\d+)", p.read_text()).group(1))
                   for p in (sweep / ".submitit").glob("*/*_submission.sh"))
    assert asked == [1, 2, 4], "one Slurm submission per world size, sized by the layout"
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 1 + 2 + 4, "one submitit task log per rank"
    for row, world in zip(rows, (1, 2, 4)):
        job = sweep / row["job"]
        prov, summary = read_json(job / "provenance.json"), read_json(job / "summary.json")
        assert prov["slurm_job_id"] and prov["world_size"] == world, prov
        assert summary["steps"] == 4 and float(row["final_loss"]) == summary["final_loss"]
        _same_losses(job, one_process)
        assert not (job / "launch_logs").exists(), "the Slurm tasks are the ranks: no launcher inside the job"
        counters = [read_json(job / f"cpu_parallel_counters.rank{r}.json") for r in range(world)] if world > 1 else []
        if world == 2:  # data parallel: gradients synchronised on every rank
            assert all(c["dp.grad_sync_forward"] > 0 for c in counters), counters
        if world == 4:  # tensor parallel all-reduces and pipeline sends on every rank
            assert all(c["mp.allreduce"] > 0 and c["collective.send"] + c["collective.recv"] > 0 for c in counters)


@needs_slurm
def test_single_job_on_slurm_without_multirun_flag(tmp_path, one_process):
    """Selecting the launcher is enough (a one-job sweep). tasks_per_node given: it wins, and a job with
    fewer tasks than ranks starts its ranks itself, with launch.py's command line (not submitit's)."""
    sweep = tmp_path / "one"
    launch("hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10",
           "hydra.launcher.tasks_per_node=1", *RUN, "parallel=dp2")
    job = sweep / "0"
    assert [r["status"] for r in csv.DictReader((sweep / "sweep.csv").open())] == ["ok"]
    [sbatch] = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "--ntasks-per-node=1\n" in sbatch.read_text()
    prov = read_json(job / "provenance.json")
    assert prov["slurm_job_id"] and prov["world_size"] == 2, prov
    assert read_json(job / "summary.json")["steps"] == 4
    assert sorted(p.name for p in (job / "launch_logs").glob("workerlog.*")) == ["workerlog.0", "workerlog.1"]
    _same_losses(job, one_process)


@needs_slurm
def test_explicit_tasks_that_fit_no_job_stop_the_sweep_before_queueing(tmp_path):
    sweep = tmp_path / "bad"
    proc = launch("-m", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.tasks_per_node=2",
                  *RUN, "parallel=dp2,tp2pp2", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "llmx: config error: hydra.launcher.tasks_per_node: 1 node(s) x 2 tasks but job #1 (dp=1 tp=2 pp=2 sharding=1) "
        "needs 4 processes (dp*tp*pp*sharding); leave tasks_per_node unset to size each job by its layout")
    assert not (sweep / ".submitit").exists(), "nothing may be queued"


STEPS = 400
LONG = [*FAST, f"stage.train.max_steps={STEPS}", "stage.train.save_steps=100", "stage.train.logging_steps=50",
        "stage.train.batch_size=4", "stage.train.grad_accum=1", "stage.eval.enabled=false"]


@needs_slurm
def test_job_signalled_for_its_time_limit_is_requeued_and_resumes(tmp_path):
    """Slurm's time-limit warning (USR2, which submitit asks Slurm to send signal_delay_s before the limit)
    delivered as soon as the job has a checkpoint, by `scancel --signal` (submitit's own test hook does the
    same; waiting for the real limit costs 25-55 s of Slurm's 30 s ticks plus the training to fill them):
    submitit requeues the job, and the new start resumes in the same run dir from the latest checkpoint and
    ends as the uninterrupted run does."""
    uninterrupted = tmp_path / "uninterrupted"
    reference = subprocess.Popen([sys.executable, str(REPO / "launch.py"), f"hydra.run.dir={uninterrupted}", *LONG],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "requeued"
    job = sweep / "0"
    sweeping = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "hydra/launcher=submitit_slurm",
                                 f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10",
                                 "hydra.launcher.signal_delay_s=5", "hydra.launcher.max_num_timeout=10", *LONG],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (job / "checkpoints" / "step-100").is_dir():
        assert sweeping.poll() is None and time.time() < deadline, "the job ended (or never started) before a checkpoint"
        time.sleep(0.05)
    job_id = read_json(job / "provenance.json")["slurm_job_id"]
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    assert sweeping.wait(timeout=420) == 0, sweeping.stderr.read()[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]

    [task_log] = (sweep / ".submitit").glob("*/*_0_log.out")
    log = task_log.read_text()
    requeues = log.count("Requeued job")
    assert requeues >= 1 and "Job completed successfully" in log, log[-3000:]
    assert log.count("resuming from ") == requeues, "every new start resumes"
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert f"Restarts={requeues}" in shown, shown  # Slurm's own count of the requeues
    sbatch = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@5" in sbatch  # the real limit would send the same signal, 5 s before it
    summary = read_json(job / "summary.json")
    assert summary["steps"] == STEPS and summary["resumed_from"].startswith("step-")
    assert [r["status"] for r in csv.DictReader((sweep / "sweep.csv").open())] == ["ok"]
    got, want = train_losses(job), train_losses(uninterrupted)
    assert [s for s, _ in got] == list(range(50, STEPS + 1, 50)), "metrics.jsonl continues without gaps or repeats"
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-6), f"step {step}"
    assert summary["final_loss"] == read_json(uninterrupted / "summary.json")["final_loss"]
    assert len(read_jsonl(job / "metrics.jsonl")) == len(read_jsonl(uninterrupted / "metrics.jsonl"))


def test_gpu_jobs_spread_over_nodes_when_a_node_has_too_few_gpus():
    """The sizing rule itself (this cluster has no GPUs): pure, paddle-free."""
    from llmx.errors import ConfigError
    from llmx.slurm import job_resources, node_gpus

    assert node_gpus("gpu:8\ngpu:a100:4(S:0-1)\n(null)\n") == 8 and node_gpus("(null)\n") is None
    unset = {"nodes": None, "tasks_per_node": None, "gpus_per_node": None}
    assert job_resources(4, False, unset, None, "j") == {"nodes": 1, "tasks_per_node": 4, "gpus_per_node": None}
    assert job_resources(4, True, unset, 8, "j") == {"nodes": 1, "tasks_per_node": 4, "gpus_per_node": 4}
    assert job_resources(16, True, unset, 8, "j") == {"nodes": 2, "tasks_per_node": 8, "gpus_per_node": 8}
    assert job_resources(8, True, {**unset, "nodes": 2}, None, "j") == {"nodes": 2, "tasks_per_node": 4,
                                                                        "gpus_per_node": 4}
    assert job_resources(2, False, {**unset, "tasks_per_node": 1}, None, "j")["tasks_per_node"] == 1
    with pytest.raises(ConfigError, match="hydra.launcher.nodes: 3 nodes cannot share the 8 ranks of j evenly"):
        job_resources(8, False, {**unset, "nodes": 3}, None, "j")


def test_a_requeued_task_drops_the_result_its_killed_attempt_left_unfinished(tmp_path, monkeypatch):
    """submitit writes a task's result to `<result>.save_tmp`, then renames it; a task killed in between (a node
    failure's requeue) left that file, and the next attempt could not write its result. Each start of a task
    removes it (its own only), and submitit then writes the result."""
    import submitit
    from submitit.core import utils

    from llmx.slurm import drop_unfinished_result

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "%j"))
    monkeypatch.setenv("SLURM_JOB_ID", "157")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    result = submitit.JobEnvironment().paths.result_pickle
    result.parent.mkdir(parents=True)
    mine, other = (result.with_name(f"157_{task}_result.pkl.save_tmp") for task in (0, 1))
    mine.touch(), other.touch()
    with pytest.raises(AssertionError, match="A temporary saved file already exists"):  # submitit's refusal
        with utils.temporary_save_path(result):
            pass
    drop_unfinished_result()
    assert not mine.exists() and other.exists()
    with utils.temporary_save_path(result) as tmp:
        tmp.write_text("done")
    assert result.read_text() == "done"
