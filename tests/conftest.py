"""pytest setup: LLMX_STRICT_SKIPS=1 (set by .ci/run) turns every skip into a failure, so CI
cannot pass by silently lacking a component a test needs. Helpers live in helpers.py.

tests/quick/ holds the paddle-light tests (config, data, layout, diff, plan: under a minute
on their own, `pytest tests/quick`); tests/runs/ the end-to-end runs.
"""
from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LLMX_STRICT_SKIPS") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under LLMX_STRICT_SKIPS=1: {report.longrepr}"
