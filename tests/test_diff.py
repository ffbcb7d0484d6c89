"""`python -m llmx diff`: config keys that differ and metric deltas, on real run directories."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FAST, REPO, launch, read_json
from helpers import HEAVY_IMPORT_MARK, run_python

TINY_RUN = [*FAST, "stage.train.max_steps=4", "stage.train.logging_steps=2", "stage.eval.enabled=false",
            "stage.train.save_steps=1000"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    a, b = root / "a", root / "b"
    launch(f"hydra.run.dir={a}", *TINY_RUN)
    launch(f"hydra.run.dir={b}", *TINY_RUN, "stage.train.lr=1e-3", "parallel=dp2")
    return a, b


def _diff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmx", "diff", *args], cwd=REPO, capture_output=True, text=True)


def test_diff_names_exactly_the_changed_keys_and_the_loss_delta(two_runs):
    a, b = two_runs
    out = _diff(str(a), str(b), "--format", "json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["config"]) == {"stage.train.lr", "parallel.dp", "defaults.parallel"}
    assert result["config"]["stage.train.lr"] == [0.003, 0.001]
    assert result["config"]["parallel.dp"] == [1, 2] and result["config"]["defaults.parallel"] == ["single", "dp2"]
    loss_a, loss_b = read_json(a / "summary.json")["final_loss"], read_json(b / "summary.json")["final_loss"]
    assert result["metrics"]["final_loss"]["delta"] == [pytest.approx(loss_b - loss_a)]


def test_diff_text_and_markdown(two_runs, tmp_path):
    a, b = two_runs
    watched = run_python("-m", "llmx", "diff", str(a), str(b), tmp_path=tmp_path)
    assert watched.returncode == 0 and HEAVY_IMPORT_MARK not in watched.stderr, watched.stderr
    text = watched.stdout
    assert "stage.train.lr" in text and "0.003" in text and "0.001" in text and "final_loss" in text
    md = _diff(str(a), str(b), "--format", "md").stdout
    assert "| stage.train.lr | 0.003 | 0.001 |" in md and "## metrics" in md


def test_diff_of_identical_configs_lists_no_keys(two_runs):
    a, _ = two_runs
    result = json.loads(_diff(str(a), str(a), "--format", "json").stdout)
    assert result["config"] == {} and result["metrics"]["final_loss"]["delta"] == [0]


def test_diff_rejects_a_non_run_dir_in_one_line(tmp_path):
    out = _diff(str(tmp_path), str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == f"llmx: error: {tmp_path}: not a run directory (no .hydra/config.yaml)"
