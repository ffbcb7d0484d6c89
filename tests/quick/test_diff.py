"""`python -m llmx diff`: config keys that differ and metric deltas, on run directories as Hydra and
llmx write them (composed configs, Hydra's group choices, a summary.json)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import HEAVY_IMPORT_MARK, REPO, compose, read_json, run_python
from omegaconf import OmegaConf


def _run_dir(path, final_loss: float, *overrides: str):
    """A finished run's directory: .hydra/config.yaml, .hydra/hydra.yaml's group choices, summary.json."""
    cfg = compose(*overrides)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    choices = {"model": "tiny", "stage": "sft", "parallel": "single", "quant": "none", "hydra/launcher": "basic"}
    choices.update(o.split("=", 1) for o in overrides if "." not in o.split("=")[0])
    OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, path / ".hydra" / "hydra.yaml")
    (path / "summary.json").write_text(json.dumps({"final_loss": final_loss, "steps": 4, "stage": "sft"}))
    return path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    return _run_dir(root / "a", 2.5), _run_dir(root / "b", 2.25, "stage.train.lr=1e-3", "parallel=dp2")


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
