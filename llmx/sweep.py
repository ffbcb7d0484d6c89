"""Sweep bookkeeping: each job's status.json, and the sweep.csv / sweep.md table.

Every job (single run or sweep job) writes `status.json` (ok/failed, the error's
last line, wall time, peak memory). In a multirun a failing job is recorded and
the sweep goes on; when the sweep ends, the Hydra callback `SweepSummary` tables
every job from its directory and, if any failed, ends the sweep with one line
saying how many. A search (hydra/sweeper=llmx_search) is tabled from its Optuna study instead: trials
best first, ending with the best trial's command line. Imports no paddle.
"""
from __future__ import annotations

import csv
import io
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from llmx.experiment import atomic_write_json, atomic_write_text

STATUS = "status.json"
# plan_gib / peak_gib: `plan`'s per-device figure and the measured peak of the busiest rank (summary.json's
# memory_plan_gib / memory_peak_gib); peak_mem_mb: the job process's own peak RSS, libraries included
COLUMNS = ["job", "overrides", "status", "final_loss", "eval_loss", "tokens_per_s", "plan_gib", "peak_gib",
           "peak_mem_mb", "wall_s", "error"]


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its finished children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def write_status(run_dir: Path, started: float, error: BaseException | None = None) -> None:
    status: dict[str, Any] = {"status": "ok" if error is None else "failed",
                              "wall_s": round(time.time() - started, 2), "peak_mem_mb": peak_memory_mb()}
    if error is not None:
        lines = [ln for ln in str(error).splitlines() if ln.strip()] or [type(error).__name__]
        status["error"] = f"{type(error).__name__}: {lines[-1]}"
    atomic_write_json(run_dir / STATUS, status)


def _job_row(job_dir: Path) -> dict:
    def load(name: str) -> dict:
        path = job_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    status, summary = load(STATUS), load("summary.json")
    row = {"job": job_dir.name, "overrides": overrides, "status": status.get("status", "unknown")}
    row.update({k: summary.get(k, "") for k in ("final_loss", "eval_loss", "tokens_per_s")})
    row.update(plan_gib=summary.get("memory_plan_gib", ""), peak_gib=summary.get("memory_peak_gib", ""))
    row.update({k: status.get(k, "") for k in ("peak_mem_mb", "wall_s", "error")})
    return row


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """One row per job; `overrides` shows only what varies between the jobs."""
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()]
    rows = [_job_row(d) for d in sorted(jobs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))]
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for r in rows:
        r["overrides"] = " ".join(o for o in r["overrides"] if o not in shared)
    return rows


def write_sweep_table(sweep_dir: Path) -> list[dict]:
    rows = sweep_rows(sweep_dir)
    _write_tables(sweep_dir, rows, COLUMNS)
    return rows


def _write_tables(sweep_dir: Path, rows: list[dict], columns: list[str], last: str = "") -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "sweep.csv", buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in columns) + " |" for r in rows]
    atomic_write_text(sweep_dir / "sweep.md", "\n".join(md) + "\n" + (f"\n{last}\n" if last else ""))


def write_search_table(sweep_dir: Path) -> list[dict] | None:
    """A search's (hydra/sweeper=llmx_search) table: its trials from the study, best first, and the
    best trial's command line; None when the sweep dir holds no study."""
    from llmx.search import study_rows

    found = study_rows(sweep_dir)
    if found is None:
        return None
    rows, columns, last = found
    _write_tables(sweep_dir, rows, columns, last)
    return rows


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml): tables the sweep when it ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or config.get("plan"):  # a sweep of plans (plan=true) ran no jobs to table
            return
        trials = write_search_table(sweep_dir)
        if trials is not None:
            self._end_search(sweep_dir, trials)
            return
        rows = write_sweep_table(sweep_dir)
        failed = [r for r in rows if r["status"] != "ok"]
        if failed:
            first = failed[0]
            # Hydra turns a callback's exception into a warning and exits 0; a failed sweep
            # must exit non-zero, with one line, so we exit here ourselves.
            sys.stderr.write(f"llmx: error: {len(failed)} of {len(rows)} sweep jobs failed (see {sweep_dir / 'sweep.md'}); "
                             f"first: job {first['job']} ({first['overrides']}): {first['error']}\n")
            raise SystemExit(2)
        print(f"sweep: {len(rows)} jobs ok; table: {sweep_dir / 'sweep.md'}")

    @staticmethod
    def _end_search(sweep_dir: Path, trials: list[dict]) -> None:
        """Failed trials are part of a search; it fails only when none completed."""
        states = [t["state"] for t in trials]
        counts = ", ".join(f"{states.count(s)} {word}" for s, word in
                           (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed")) if s in states)
        if "COMPLETE" not in states:
            first = next((t for t in trials if t["error"]), None)
            sys.stderr.write(f"llmx: error: search: no trial completed ({counts}; see {sweep_dir / 'sweep.md'})"
                             + (f"; first: trial {first['trial']}: {first['error']}" if first else "") + "\n")
            raise SystemExit(2)
        print(f"search: {len(trials)} trials ({counts}); best first in {sweep_dir / 'sweep.md'}")
