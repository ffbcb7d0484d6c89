"""Multirun: one failing job does not stop the others, and the sweep ends with sweep.csv / sweep.md."""
from __future__ import annotations

import csv
import json

from helpers import FAST, launch


def test_sweep_table_records_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    out = launch("-m", f"hydra.sweep.dir={sweep}", *FAST, "stage.train.max_steps=4", "stage.eval.enabled=false",
                 "stage.train.logging_steps=2", "stage.train.save_steps=1000", "stage.train.lr=-1,1e-3,2e-3",
                 check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("llmx: error: 1 of 3 sweep jobs failed")
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        ("0", "stage.train.lr=-1", "failed"), ("1", "stage.train.lr=0.001", "ok"), ("2", "stage.train.lr=0.002", "ok")]
    assert "stage.train.lr=-1.0: must be > 0" in rows[0]["error"]
    for row in rows[1:]:
        summary = json.loads((sweep / row["job"] / "summary.json").read_text())
        assert float(row["final_loss"]) == summary["final_loss"] and float(row["tokens_per_s"]) > 0
        assert float(row["wall_s"]) > 0 and float(row["peak_mem_mb"]) > 100
    md = (sweep / "sweep.md").read_text().splitlines()
    assert md[0].startswith("| job | overrides | status |") and len(md) == 2 + 3
