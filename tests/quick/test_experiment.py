"""The experiment directory: checkpoint commit/resume discovery, metrics continuation, atomic files."""
from __future__ import annotations

import json
import subprocess
import zlib

from llmx.experiment import COMPLETE_MARKER, Experiment, atomic_dir, code_version


def _fake_checkpoint(exp: Experiment, step: int):
    """What a writer (the Trainer, or an engine function) leaves in the staging dir."""
    staging = exp.staging_dir() / f"checkpoint-{step}"
    (staging / "sub").mkdir(parents=True)
    (staging / "model.safetensors").write_text("w")
    (staging / "sub" / "rng.pth").write_text("rng")
    return staging


def test_commit_marks_complete_points_latest_and_prunes(tmp_path):
    exp = Experiment(tmp_path)
    for step in (10, 20, 30):
        exp.commit_checkpoint(_fake_checkpoint(exp, step), step, keep=2)
    assert [p.name for p in exp.complete_checkpoints()] == ["step-20", "step-30"]
    assert (exp.checkpoints / "latest").read_text().strip() == "step-30"
    assert exp.latest_checkpoint() == exp.checkpoints / "step-30"
    marker = json.loads((exp.checkpoints / "step-30" / COMPLETE_MARKER).read_text())
    assert marker == {"step": 30, "files": {"model.safetensors": {"size": 1, "crc32": f"{zlib.crc32(b'w'):08x}"},
                                            "sub/rng.pth": {"size": 3, "crc32": f"{zlib.crc32(b'rng'):08x}"}}}
    assert not exp.staging_dir().exists() or not any(exp.staging_dir().iterdir())


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    exp = Experiment(tmp_path)
    exp.commit_checkpoint(_fake_checkpoint(exp, 10), 10, keep=0)
    # a crash mid-save leaves only a staging dir, or a step dir without the marker
    _fake_checkpoint(exp, 20)
    (exp.checkpoints / "step-30").mkdir()
    assert exp.latest_checkpoint() == exp.checkpoints / "step-10"
    # a dangling `latest` pointer falls back to the newest complete checkpoint
    (exp.checkpoints / "latest").write_text("step-30\n")
    assert exp.latest_checkpoint() == exp.checkpoints / "step-10"


def test_metrics_continue_after_resume(tmp_path):
    exp = Experiment(tmp_path)
    for step in (0, 10, 20, 30):
        exp.log_metrics({"step": step, "loss": 1.0 / (step + 1)})
    exp.truncate_metrics_after(20)
    assert [r["step"] for r in exp.read_metrics()] == [0, 10, 20]
    exp.log_metrics({"step": 30, "loss": 0.5})
    assert [json.loads(line)["step"] for line in exp.metrics_path.read_text().splitlines()] == [0, 10, 20, 30]


def test_non_writer_writes_nothing(tmp_path):
    exp = Experiment(tmp_path / "run", writer=False)
    exp.log_metrics({"step": 1})
    exp.write_summary({"a": 1})
    assert not (tmp_path / "run").exists()


def test_atomic_dir_keeps_old_contents_until_success(tmp_path):
    dst = tmp_path / "model"
    with atomic_dir(dst) as tmp:
        (tmp / "w").write_text("v1")
    try:
        with atomic_dir(dst) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("crash while saving")
    except RuntimeError:
        pass
    assert (dst / "w").read_text() == "v1"
    with atomic_dir(dst) as tmp:
        (tmp / "w").write_text("v2")
    assert (dst / "w").read_text() == "v2" and not (tmp_path / ".model.old").exists()


def test_code_version_reports_dirty_tree(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    clean = code_version(tmp_path)
    assert len(clean["git_sha"]) == 40 and clean["dirty"] is False and clean["diff_sha256"] is None
    (tmp_path / "f").write_text("2")
    dirty = code_version(tmp_path)
    assert dirty["dirty"] is True and len(dirty["diff_sha256"]) == 64


def test_elapsed_before_skips_eval_records(tmp_path):
    """A finished run's last metrics rows are eval records (no elapsed_s): resuming must not trip on them."""
    exp = Experiment(tmp_path)
    assert exp.elapsed_before() == 0.0
    for row in ({"step": 10, "loss": 1.0, "elapsed_s": 4.5}, {"step": 10, "eval_loss": 0.9}, {"step": 10, "exact_match": 0.5}):
        exp.log_metrics(row)
    assert exp.elapsed_before() == 4.5


def test_completed_summary_and_ran_nothing(tmp_path):
    exp = Experiment(tmp_path / "run", writer=False)
    assert exp.ran_nothing() and exp.completed_summary() is None  # no directory yet
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / "llmx.log").write_text("")
    assert exp.ran_nothing()
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"steps": 5}))
    assert not exp.ran_nothing() and exp.completed_summary() is None  # no status: it did not finish
    (tmp_path / "run" / "status.json").write_text(json.dumps({"status": "failed"}))
    assert exp.completed_summary() is None
    (tmp_path / "run" / "status.json").write_text(json.dumps({"status": "ok"}))
    assert exp.completed_summary() == {"steps": 5}
