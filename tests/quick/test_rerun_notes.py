"""`rerun` says when the fused kernels that ran differ from the recorded run's (model.fused_ops=auto on a
machine that could not build them runs Paddle's composed ops, whose rounding differs)."""
from __future__ import annotations

import json

from llmx.rerun import fused_ops_note


def _run(path, **summary):
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_rerun_names_the_fused_kernels_that_differ(tmp_path):
    recorded = _run(tmp_path / "a", fused_ops=["add_rms_norm", "rms_norm"])
    assert fused_ops_note(recorded, _run(tmp_path / "b", fused_ops=["add_rms_norm", "rms_norm"])) is None
    assert fused_ops_note(recorded, _run(tmp_path / "c", fused_ops=[])) == (
        "fused kernels: add_rms_norm, rms_norm then, none now (losses may differ by float32 rounding; "
        "`python -m llmx.ops check` says why a kernel is missing)")
    assert fused_ops_note(_run(tmp_path / "off", loss=1.0), tmp_path / "c") is None  # fused_ops=off records none
