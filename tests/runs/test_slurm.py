"""A real Slurm cluster (one node, started by .ci/slurm-up) runs a sweep over parallel layouts through
hydra-submitit-launcher; the Slurm tasks of each job are its ranks."""
from __future__ import annotations

import csv
import shutil
import subprocess

import pytest
from helpers import FAST, launch, read_json


def _slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and "idle" in out.stdout


pytestmark = pytest.mark.skipif(not _slurm_is_up(), reason="no idle Slurm node here: run .ci/slurm-up (needs root)")

RUN = [*FAST, "stage.train.max_steps=4", "stage.train.logging_steps=2", "stage.eval.enabled=false",
       "stage.train.save_steps=2", "stage.train.batch_size=4", "stage.train.grad_accum=2"]


def test_layout_sweep_through_submitit_slurm(tmp_path):
    single = tmp_path / "single"
    launch(f"hydra.run.dir={single}", *RUN)
    reference = read_json(single / "summary.json")["final_loss"]

    sweep = tmp_path / "sweep"
    launch("-m", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10",
           "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1", *RUN, "parallel=dp2,tp2")
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["overrides"], r["status"]) for r in rows] == [("parallel=dp2", "ok"), ("parallel=tp2", "ok")]
    for row in rows:
        job = sweep / row["job"]
        for name in (".hydra/config.yaml", "provenance.json", "metrics.jsonl", "summary.json", "checkpoints/latest",
                     "llmx.log", "cpu_parallel_counters.rank0.json", "cpu_parallel_counters.rank1.json"):
            assert (job / name).exists(), f"{job}/{name}"
        prov, summary = read_json(job / "provenance.json"), read_json(job / "summary.json")
        assert prov["slurm_job_id"] and prov["world_size"] == 2, prov
        assert summary["steps"] == 4 and float(row["final_loss"]) == summary["final_loss"]
        assert summary["final_loss"] == pytest.approx(reference, rel=1e-5), "a Slurm layout must match one process"
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) >= 4, "two tasks per job, two jobs"


def test_single_job_on_slurm_without_multirun_flag(tmp_path):
    """Selecting a submitit launcher is enough: the run becomes a one-job sweep on Slurm."""
    sweep = tmp_path / "one"
    launch("hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10", *RUN)
    assert read_json(sweep / "0" / "summary.json")["steps"] == 4
    assert read_json(sweep / "0" / "provenance.json")["slurm_job_id"]
    assert [r["status"] for r in csv.DictReader((sweep / "sweep.csv").open())] == ["ok"]
