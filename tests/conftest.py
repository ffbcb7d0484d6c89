"""Shared test helpers: run `python launch.py` for real, read run directories.

LLMX_STRICT_SKIPS=1 (set by .ci/run) turns every skip into a failure, so CI
cannot pass by silently lacking a component a test needs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Short, quiet runs: tests override only what they are about.
FAST = ["stage.train.progress_bar=false"]


def launch(*overrides: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python launch.py <overrides>` from the repo root, as a user would."""
    proc = subprocess.run([sys.executable, "launch.py", *overrides], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.py {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LLMX_STRICT_SKIPS") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under LLMX_STRICT_SKIPS=1: {report.longrepr}"
