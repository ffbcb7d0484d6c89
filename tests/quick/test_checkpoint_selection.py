"""Which checkpoint a relaunch resumes from when a write was killed, the disk was full or a file was damaged
(llmx.experiment; the end-to-end runs are tests/runs/test_checkpoint_faults.py)."""
from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest

from llmx.experiment import CheckpointWriteError, Experiment


def _commit(exp: Experiment, step: int, keep: int = 0):
    staging = exp.staging_dir() / f"step-{step}"
    (staging / "sub").mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(bytes(range(200)) * 5)
    (staging / "sub" / "rng.json").write_text('{"seed": 1}')
    return exp.commit_checkpoint(staging, step, keep)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_truncated_file_is_skipped_with_one_line_and_kept(tmp_path, caplog):
    exp = Experiment(tmp_path).create()
    for step in (2, 4, 6):
        _commit(exp, step)
    weights = exp.checkpoint_dir(6) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    assert exp.latest_checkpoint() == exp.checkpoint_dir(4)
    assert _warnings(caplog) == [f"checkpoint {exp.checkpoint_dir(6)} is damaged (model.safetensors holds 300 of "
                                 "its 1000 bytes): skipped, kept as damaged-step-6"]
    kept = exp.checkpoints / "damaged-step-6"
    assert (kept / "model.safetensors").stat().st_size == 300  # the user's data, untouched
    caplog.clear()
    # the relaunch writes step-6 again; a later resume picks it, and the damaged copy stays aside
    _commit(exp, 6)
    assert exp.latest_checkpoint() == exp.checkpoint_dir(6) and not _warnings(caplog)
    assert kept.is_dir()


def test_a_flipped_byte_fails_the_crc_and_a_missing_file_is_named(tmp_path, caplog):
    exp = Experiment(tmp_path).create()
    for step in (1, 2, 3):
        _commit(exp, step)
    weights = exp.checkpoint_dir(3) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[500] ^= 1
    weights.write_bytes(bytes(data))
    (exp.checkpoint_dir(2) / "sub" / "rng.json").unlink()
    assert exp.latest_checkpoint() == exp.checkpoint_dir(1)
    assert [m.split("(")[1].split(")")[0] for m in _warnings(caplog)] == [
        "model.safetensors fails its CRC-32 check", "sub/rng.json is missing"]


def test_a_reader_skips_damage_without_renaming(tmp_path, caplog):
    _commit(Experiment(tmp_path).create(), 1)
    writer = Experiment(tmp_path)
    _commit(writer, 2)
    (writer.checkpoint_dir(2) / "model.safetensors").write_bytes(b"")
    assert Experiment(tmp_path, writer=False).latest_checkpoint() == writer.checkpoint_dir(1)
    assert writer.checkpoint_dir(2).is_dir() and len(_warnings(caplog)) == 1


def test_markers_of_older_versions_hold_sizes_only(tmp_path):
    exp = Experiment(tmp_path).create()
    ckpt = _commit(exp, 5)
    (ckpt / "llmx_checkpoint.json").write_text('{"step": 5, "files": {"model.safetensors": 1000, "sub/rng.json": 11}}')
    assert exp.latest_checkpoint() == ckpt
    (ckpt / "sub" / "rng.json").write_text("{}")
    assert exp.latest_checkpoint() is None


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   # safetensors' writer raises its own type, the OS error in its message
                                   RuntimeError("Error while serializing: I/O error: No space left on device "
                                                "(os error 28)")], ids=["OSError", "safetensors"])
def test_a_full_disk_removes_the_partial_write_and_keeps_the_previous_checkpoint(tmp_path, error):
    exp = Experiment(tmp_path).create()
    _commit(exp, 3)
    staging = exp.staging_dir() / "step-4"
    with pytest.raises(CheckpointWriteError) as raised:
        with exp.writing_checkpoint(4, staging):
            staging.mkdir(parents=True)
            (staging / "model.safetensors").write_bytes(b"part")
            raise error
    assert str(raised.value) == (f"no space left on device while writing checkpoint step-4 to {exp.checkpoints}; "
                                 "the previous checkpoint step-3 is kept")
    assert not staging.exists() and exp.latest_checkpoint() == exp.checkpoint_dir(3)


def test_other_failures_of_a_write_pass_through(tmp_path):
    exp = Experiment(tmp_path).create()
    with pytest.raises(KeyError):
        with exp.writing_checkpoint(1, exp.staging_dir() / "step-1"):
            raise KeyError("a bug, not the disk")


def test_leftovers_of_a_killed_write_are_cleared_never_resumed(tmp_path):
    exp = Experiment(tmp_path).create()
    _commit(exp, 1)
    ckpt = _commit(exp, 2)
    # killed mid-write, mid-rename (the old copy of a re-written step) and mid-prune
    (exp.staging_dir() / "step-3").mkdir(parents=True)
    (exp.checkpoints / ".step-2.old").mkdir()
    (exp.checkpoints / ".step-1.removing").mkdir()
    assert exp.latest_checkpoint() == ckpt
    exp.clear_partial_writes()
    assert sorted(p.name for p in exp.checkpoints.iterdir()) == ["latest", "step-1", "step-2"]


def test_a_kill_mid_prune_never_leaves_a_part_of_a_checkpoint_under_its_name(tmp_path, monkeypatch, caplog):
    exp = Experiment(tmp_path).create()
    for step in (1, 2):
        _commit(exp, step, keep=2)
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):  # deletes one file, then the process dies
        path = Path(path)
        if (path / "model.safetensors").exists():
            (path / "model.safetensors").unlink()
            raise SystemExit("killed")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(SystemExit):
        _commit(exp, 3, keep=2)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert [p.name for p in exp.complete_checkpoints()] == ["step-2", "step-3"]
    (exp.checkpoint_dir(3) / "model.safetensors").unlink()  # the newest damaged: resume walks back to step-2
    assert exp.latest_checkpoint() == exp.checkpoint_dir(2) and len(_warnings(caplog)) == 1


def test_a_start_without_a_checkpoint_drops_the_metrics_of_attempts_killed_before_their_first(tmp_path):
    killed = Experiment(tmp_path)
    for step in (0, 1, 2):
        killed.log_metrics({"step": step})
    relaunch = Experiment(tmp_path)
    relaunch.log_metrics({"step": 0, "eval_before": 1.0})  # a stage that measures before fit's resume_point
    relaunch.discard_earlier_attempts()
    relaunch.log_metrics({"step": 1})
    assert relaunch.read_metrics() == [{"step": 0, "eval_before": 1.0}, {"step": 1}]
    Experiment(tmp_path).discard_earlier_attempts()
    assert Experiment(tmp_path).read_metrics() == []
