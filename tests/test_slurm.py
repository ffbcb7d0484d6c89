"""A real Slurm cluster (one node, started by .ci/slurm-up) runs a sweep through hydra-submitit-launcher."""
from __future__ import annotations

import csv
import shutil
import subprocess

import pytest

from conftest import FAST, launch, read_json


def _slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and "idle" in out.stdout


pytestmark = pytest.mark.skipif(not _slurm_is_up(), reason="no idle Slurm node here: run .ci/slurm-up (needs root)")


def test_sweep_through_submitit_slurm(tmp_path):
    sweep = tmp_path / "sweep"
    launch("-m", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10",
           "hydra.launcher.cpus_per_task=1", *FAST, "stage.train.max_steps=4", "stage.train.logging_steps=2",
           "stage.eval.enabled=false", "stage.train.save_steps=2", "stage.train.lr=1e-3,2e-3")
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["overrides"], r["status"]) for r in rows] == [("stage.train.lr=0.001", "ok"), ("stage.train.lr=0.002", "ok")]
    for row in rows:
        job = sweep / row["job"]
        for name in (".hydra/config.yaml", "provenance.json", "metrics.jsonl", "summary.json", "checkpoints/latest", "llmx.log"):
            assert (job / name).exists(), f"{job}/{name}"
        summary = read_json(job / "summary.json")
        assert summary["steps"] == 4 and float(row["final_loss"]) == summary["final_loss"]
        assert read_json(job / "provenance.json")["slurm_job_id"], "the job did not run under Slurm"
    assert list((sweep / ".submitit").glob("*/*_0_log.out")), "no submitit job logs"
