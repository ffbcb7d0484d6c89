"""The experiment directory: provenance, metrics, summary, samples, checkpoints.

Layout (Hydra's run dir):
    .hydra/               Hydra's own config/hydra/overrides.yaml
    provenance.json       code version, packages, host, devices, world, seed, command
    metrics.jsonl         one JSON object per logged step (also sent to the chosen trackers: llmx.tracking)
    summary.json          final metrics
    samples.jsonl         generations at eval time
    checkpoints/step-N/   complete checkpoints; `checkpoints/latest` names the newest (the folder
                          exists only once a checkpoint is written)
    llmx.log              the run's log

Every file that a crash could leave half-written is written to a temporary name, synced to disk
and renamed, so resume never picks up a partial checkpoint or summary. A checkpoint's marker records
every file's size and CRC-32; resume skips (and sets aside) a checkpoint whose files no longer match.
Imports no paddle.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from llmx.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_PREFIX = "step-"
# Written by llmx into a checkpoint once everything else is in it and on disk, just before the rename
# into place: a step dir without it is never resumed from. It lists every file's size and CRC-32.
COMPLETE_MARKER = "llmx_checkpoint.json"
DAMAGED_PREFIX = "damaged-"  # a checkpoint resume found damaged is renamed so, never deleted
# Test hook (tests/runs/test_checkpoint_faults.py): seconds to pause before each file of a checkpoint is
# sealed and before each step of its commit, so that a test's SIGKILL lands inside the write.
SLOW_WRITE_HOOK = "LLMX_TEST_SLOW_CHECKPOINT_WRITE"
# What Hydra writes into a run dir before the job starts; a dir holding only these ran nothing.
HYDRA_FILES = (".hydra", "llmx.log")
# What `python -m llmx rerun --check` compares step by step.
LOSS_KEYS = ("loss", "eval_loss")
PACKAGES = ("paddlepaddle", "paddlepaddle-gpu", "paddlenlp", "llmx", "hydra-core", "omegaconf", "numpy")


def atomic_write_text(path: Path, text: str) -> None:
    """`path` holds the old text or the new, never a part (on disk before the rename: a power loss
    cannot leave an empty file under the final name)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sync_dir(path: Path) -> None:
    """Put a directory's entries (files created or renamed in it) on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_dir(path: Path) -> None:
    """Delete a directory: first renamed to a hidden name, so a kill midway never leaves a part of it
    under its own name (a checkpoint that lost files but kept its marker)."""
    if not path.exists():
        return
    doomed = path.with_name(f".{path.name}.removing")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written directory onto `dst`; an old `dst` is removed only after."""
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def seal_file(path: Path) -> dict:
    """Size and CRC-32 of a written file, once it is on disk. CRC-32 (zlib, over a GB/s) rather than a
    cryptographic hash: it guards against truncation and torn or flipped blocks, not against an attacker."""
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "crc32": f"{crc:08x}"}


def file_damage(root: Path, files: dict) -> Optional[str]:
    """What is wrong with the files under `root` against their recorded {name: {size, crc32}} (a bare size
    in checkpoints of older llmx versions): None when nothing is. Sizes first: they cost no reading."""
    wanted = {name: rec if isinstance(rec, dict) else {"size": rec} for name, rec in files.items()}
    for name, rec in wanted.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != rec["size"]:
            return f"{name} holds {size} of its {rec['size']} bytes"
    for name, rec in wanted.items():
        try:
            if "crc32" in rec and seal_file(root / name)["crc32"] != rec["crc32"]:
                return f"{name} fails its CRC-32 check"
        except OSError as error:  # (another rank's resume set the checkpoint aside meanwhile)
            return f"{name} is unreadable: {error.strerror}"
    return None


def os_error_code(error: BaseException) -> Optional[int]:
    """The OS error behind `error` or its causes: an OSError's errno, or the `(os error N)` that safetensors'
    writer (Rust) puts in the message of its own exception type."""
    while error is not None:
        if isinstance(error, OSError) and error.errno:
            return error.errno
        found = re.search(r"\(os error (\d+)\)", str(error))
        if found:
            return int(found.group(1))
        error = error.__cause__ or error.__context__
    return None


def pause_for_tests() -> None:
    """The SLOW_WRITE_HOOK test hook; nothing unless a test sets it."""
    seconds = os.environ.get(SLOW_WRITE_HOOK)
    if seconds:
        time.sleep(float(seconds))


class CheckpointWriteError(UserError):
    """The disk refused a checkpoint (full, over quota, failing): the partial write is gone, the
    checkpoints before it are as they were."""


@contextmanager
def atomic_dir(dst: Path):
    """Yield a temporary sibling directory to write into; it becomes `dst` on success."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    replace_dir(tmp, dst)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # absent, or not empty
        pass


def _git(args: list[str], cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_version(source_dir: Path) -> dict:
    """Git sha of the llmx source tree, whether it is dirty and a hash of the diff."""
    sha = _git(["rev-parse", "HEAD"], source_dir)
    if sha is None:
        return {"git_sha": None, "dirty": None, "diff_sha256": None}
    diff = _git(["diff", "HEAD"], source_dir) or ""
    untracked = _git(["ls-files", "--others", "--exclude-standard"], source_dir) or ""
    dirty = bool(diff.strip() or untracked.strip())
    digest = hashlib.sha256((diff + untracked).encode()).hexdigest() if dirty else None
    return {"git_sha": sha.strip(), "dirty": dirty, "diff_sha256": digest}


def package_versions(names: Iterable[str] = PACKAGES) -> dict:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Experiment:
    """Files of one run directory. Only the main process writes (`writer=True`)."""

    def __init__(self, run_dir: str | os.PathLike, writer: bool = True) -> None:
        self.dir = Path(run_dir).resolve()
        self.writer = writer
        self.checkpoints = self.dir / CHECKPOINTS
        self.metrics_path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "samples.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.trackers = None  # llmx.tracking.Trackers while a run is tracked (main process only)
        self.lines_logged = 0  # metrics.jsonl lines this process appended (the rest are earlier attempts')

    def create(self) -> "Experiment":
        """The run directory; `checkpoints/` comes with the first checkpoint (a stage that writes none
        leaves no empty folder)."""
        if self.writer:
            self.dir.mkdir(parents=True, exist_ok=True)
        return self

    # -- provenance -----------------------------------------------------------
    def write_provenance(self, seed: int, world_size: int, devices: list[str], extra: Optional[dict] = None) -> dict:
        source = Path(__file__).resolve().parent.parent
        prov = {
            "code": code_version(source),
            "versions": package_versions(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "devices": devices,
            "world_size": world_size,
            "seed": seed,
            "command": [sys.executable, *sys.argv],
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "cwd": os.getcwd(),
            **(extra or {}),
        }
        if self.writer:
            atomic_write_json(self.dir / "provenance.json", prov)
        return prov

    # -- metrics ----------------------------------------------------------------
    def log_metrics(self, record: dict) -> None:
        """One metrics.jsonl line, and the same record to every open tracker: the one way metrics leave a run."""
        if self.writer:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            self.lines_logged += 1
            if self.trackers is not None:
                self.trackers.log(record)

    def open_trackers(self, logger: dict, config: dict, sweep: bool = False) -> None:
        """Open the trackers `logger` (a resolved `logger` block) chooses, with `config` as their parameters
        (`sweep`: the run is a multirun's job, grouped with the sweep's other jobs)."""
        if self.writer and any(v is not None for v in logger.values()):
            from llmx.tracking import open_trackers

            self.trackers = open_trackers(logger, self.dir, config, sweep)

    def close_trackers(self, summary: Optional[dict]) -> None:
        """Hand the trackers the summary (None: the run failed) and close them."""
        trackers, self.trackers = self.trackers, None
        if trackers is not None:
            trackers.finish(summary)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def measured_before(self, measure: Callable[[], dict], resumed: bool) -> dict:
        """The held-out measurements of the run's start (keys ending in `_before`): `measure()`'s, logged at
        step 0, or, when the run resumes, read back from that record (the model has trained since)."""
        if not resumed:
            before = measure()
            self.log_metrics({"step": 0, **before})
            return before
        first = next((r for r in self.read_metrics() if r.get("step") == 0 and any(k.endswith("_before") for k in r)), {})
        return {k: v for k, v in first.items() if k.endswith("_before")}

    def logged_losses(self) -> list[tuple[int, str, float]]:
        """(step, key, value) of every loss in metrics.jsonl, in order: what `rerun --check` compares."""
        return [(r["step"], k, r[k]) for r in self.read_metrics() for k in LOSS_KEYS if k in r]

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint we restart from, so the
        file continues as if the run had never stopped."""
        if not self.writer or not self.metrics_path.exists():
            return
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def discard_earlier_attempts(self) -> None:
        """A start with no checkpoint to resume from: drop the lines of earlier attempts killed before their
        first checkpoint, so the file holds this attempt's steps only once."""
        if not self.writer or not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines(keepends=True)
        atomic_write_text(self.metrics_path, "".join(lines[len(lines) - self.lines_logged:] if self.lines_logged else []))

    def elapsed_before(self) -> float:
        """Training seconds logged so far (a resumed run continues the clock)."""
        timed = [r for r in self.read_metrics() if "elapsed_s" in r]
        return float(timed[-1]["elapsed_s"]) if timed else 0.0

    def read_json(self, name: str) -> Optional[dict]:
        path = self.dir / name
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except json.JSONDecodeError:
            return None

    def completed_summary(self) -> Optional[dict]:
        """The summary of a run that finished in this directory (status ok), else None."""
        status = self.read_json("status.json") or {}
        return self.read_json("summary.json") if status.get("status") == "ok" else None

    def ran_nothing(self) -> bool:
        """Does the directory hold only what Hydra wrote before the job started?"""
        return all(p.name in HYDRA_FILES for p in self.dir.iterdir()) if self.dir.is_dir() else True

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            atomic_write_json(self.summary_path, summary)

    def write_samples(self, samples: list[dict]) -> None:
        if self.writer:
            atomic_write_text(self.samples_path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))

    # -- checkpoints ------------------------------------------------------------
    def staging_dir(self) -> Path:
        """Where a checkpoint is written before it is renamed into place."""
        return self.checkpoints / ".staging"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"{STEP_PREFIX}{step}"

    def clear_partial_writes(self) -> None:
        """Remove what a killed run left half-written (the staging dir, a checkpoint half renamed or half
        pruned: hidden names; never resumed from, only taking disk space), what a writer left in staging (the
        Trainer's output dir, which it creates even when it saves nothing), and `checkpoints/` itself when no
        checkpoint is there."""
        if not self.writer or not self.checkpoints.is_dir():
            return
        for leftover in self.checkpoints.glob(".*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        _remove_if_empty(self.checkpoints)

    @contextmanager
    def writing_checkpoint(self, step: int, staging: Path):
        """Around the write and commit of checkpoint `step` into `staging`: when the disk refuses it (full,
        over quota, failing), the partial write is removed and the run ends with one line; the checkpoints
        before stay as they were, and a relaunch resumes from the newest."""
        try:
            yield staging
        except Exception as error:
            code = os_error_code(error)
            if code is None or code == errno.EINTR:
                raise
            if self.writer:
                shutil.rmtree(staging, ignore_errors=True)  # the space a relaunch needs, status.json's first
            before = [p.name for p in self.complete_checkpoints() if self.checkpoint_step(p) < step]
            kept = f"the previous checkpoint {before[-1]} is kept" if before else "there is no earlier checkpoint"
            raise CheckpointWriteError(f"{os.strerror(code).lower()} while writing checkpoint {STEP_PREFIX}{step} "
                                       f"to {self.checkpoints}; {kept}") from error

    def commit_checkpoint(self, written: Path, step: int, keep: int) -> Path:
        """Seal a fully written checkpoint (every file on disk, its size and CRC-32 in the marker), rename it
        into place, point `latest` at it, prune old ones. A kill at any moment leaves either the checkpoints
        before or these plus the new one, each intact."""
        files = {}
        for path in sorted(written.rglob("*")):
            if path.is_file():
                pause_for_tests()
                files[str(path.relative_to(written))] = seal_file(path)
        pause_for_tests()
        atomic_write_json(written / COMPLETE_MARKER, {"step": step, "files": files})
        sync_dir(written)
        final = self.checkpoint_dir(step)
        pause_for_tests()
        replace_dir(written, final)  # a re-run of the same step after resume replaces the old copy
        sync_dir(self.checkpoints)
        pause_for_tests()
        atomic_write_text(self.checkpoints / LATEST, final.name + "\n")
        _remove_if_empty(self.staging_dir())  # emptied by the rename (unless another writer's files are there)
        if keep > 0:
            for old in self.complete_checkpoints()[:-keep]:
                remove_dir(old)
        return final

    def complete_checkpoints(self) -> list[Path]:
        found = [
            p for p in self.checkpoints.glob(f"{STEP_PREFIX}*")
            if p.is_dir() and p.name[len(STEP_PREFIX):].isdigit() and (p / COMPLETE_MARKER).exists()
        ]
        return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))

    def checkpoint_damage(self, path: Path) -> Optional[str]:
        """What is wrong with a complete checkpoint's files (None: nothing), against its marker."""
        try:
            files = json.loads((path / COMPLETE_MARKER).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{COMPLETE_MARKER} is unreadable"
        return file_damage(path, files)

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint whose files are intact. A damaged one is skipped with one warning
        and renamed `damaged-step-N` (the writer does; kept for the user, never deleted nor resumed from)."""
        for ckpt in reversed(self.complete_checkpoints()):
            damage = self.checkpoint_damage(ckpt)
            if damage is None:
                return ckpt
            aside = ckpt.with_name(DAMAGED_PREFIX + ckpt.name)
            n = 1
            while aside.exists():
                aside, n = ckpt.with_name(f"{DAMAGED_PREFIX}{ckpt.name}.{n}"), n + 1
            if self.writer:
                os.replace(ckpt, aside)
            log.warning("checkpoint %s is damaged (%s): skipped%s", ckpt, damage,
                        f", kept as {aside.name}" if self.writer else "")
        return None

    @staticmethod
    def checkpoint_step(path: Path) -> int:
        return int(path.name[len(STEP_PREFIX):])
