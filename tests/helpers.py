"""Run `python launch.py` as a user would and read its one-line config errors.

Every run gets a `sitecustomize` (through PYTHONPATH) that, at exit, writes
HEAVY_IMPORT_MARK to stderr if paddle or paddlenlp was imported: config errors,
`--help` and `--cfg job` must answer without them. The run itself is unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY_IMPORT_MARK = "TEST-WATCH: heavy modules imported:"

_WATCH = f'''import atexit, sys

def _report_heavy_imports():
    heavy = [m for m in ("paddle", "paddlenlp") if m in sys.modules]
    if heavy:
        sys.stderr.write({HEAVY_IMPORT_MARK!r} + " " + ", ".join(heavy) + "\\n")

atexit.register(_report_heavy_imports)
'''


def run_python(*argv: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python <argv>` from the repo root, watched for heavy imports."""
    watch = tmp_path / "_import_watch"
    watch.mkdir(exist_ok=True)
    (watch / "sitecustomize.py").write_text(_WATCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(watch), os.environ.get("PYTHONPATH")])))
    env.pop("HYDRA_FULL_ERROR", None)  # it turns our one-line errors back into tracebacks
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_launch(*args: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_python("launch.py", *args, tmp_path=tmp_path, timeout=timeout)


def config_error(*overrides: str, tmp_path: Path, multirun: bool = False) -> str:
    """Run a launch that must fail on its input; check exit code 2, no heavy import and a
    single non-empty stderr line, and return that line."""
    where = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
    proc = run_launch(*(["-m"] if multirun else []), *overrides, where, tmp_path=tmp_path)
    report = f"launch.py {' '.join(overrides)} -> exit {proc.returncode}\n--- stderr:\n{proc.stderr}"
    assert HEAVY_IMPORT_MARK not in proc.stderr, "paddle imported before the error\n" + report
    assert proc.returncode == 2, report
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, report
    assert "warning" not in lines[0].lower() and "Traceback" not in lines[0], report
    assert lines[0].startswith("llmx: "), report
    return lines[0]
