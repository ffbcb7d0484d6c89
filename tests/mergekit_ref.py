"""mergekit 0.1.4 itself, the reference of tests/runs/test_mergekit_parity.py.

Its pins (transformers 5 for 0.1.5; older pydantic, peft) do not fit llmx's environment, but mergekit
0.1.4 runs beside transformers 4.55.4 and torch with these exact versions installed without their
dependency pins. pip extras cannot say --no-deps, so `mergekit_dir()` installs them once per machine
(`pip install --no-deps --target`) into `$LLMX_MERGEKIT_CACHE` (default `~/.cache/llmx/mergekit-0.1.4`),
written under a temporary name and renamed, and `run_recipes()` runs mergekit in a subprocess with that
directory first on PYTHONPATH: its pydantic 2.10.6 + pydantic_core 2.27.2 shadow the venv's own pair, so
the subprocess sees one consistent pydantic. Where pip cannot fetch them (offline) the caller skips,
and `.ci/run` (LLMX_STRICT_SKIPS=1) turns that skip into a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Tuple

PACKAGES = ("mergekit==0.1.4", "accelerate==1.6.0", "immutables==0.21", "peft==0.15.2", "pydantic==2.10.6",
            "pydantic_core==2.27.2")

# Runs in the subprocess: each (recipe file, output directory) through mergekit.merge.run_merge.
DRIVER = """
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for recipe, out in json.load(open(sys.argv[1])):
    config = MergeConfiguration.model_validate(yaml.safe_load(open(recipe)))
    run_merge(config, out, options=MergeOptions(cuda=False, random_seed=0, copy_tokenizer=False,
                                                write_model_card=False, quiet=True))
"""


def cache_dir() -> Path:
    return Path(os.environ.get("LLMX_MERGEKIT_CACHE") or Path.home() / ".cache" / "llmx" / "mergekit-0.1.4")


def mergekit_dir() -> Tuple[Optional[Path], str]:
    """(the directory to put on PYTHONPATH, "") once installed; (None, why not) when pip cannot install it."""
    target = cache_dir()
    if (target / "mergekit" / "merge.py").is_file():
        return target, ""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".install-"))
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                               "--no-compile", "--target", str(tmp), *PACKAGES], capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return None, f"pip could not install {' '.join(PACKAGES)}: {lines[-1] if lines else proc.returncode}"
        try:
            tmp.rename(target)  # atomic; a concurrent session that got there first wins
        except OSError:
            if not (target / "mergekit" / "merge.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, ""


def run_recipes(site: Path, jobs: list[tuple[Path, Path]]) -> None:
    """Run mergekit on each (recipe, output directory), all in one subprocess (one torch import)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[str(r), str(o)] for r, o in jobs], f)
    env = dict(os.environ, PYTHONPATH=str(site), CUDA_VISIBLE_DEVICES="")
    try:
        proc = subprocess.run([sys.executable, "-c", DRIVER, f.name], capture_output=True, text=True, env=env,
                              timeout=900)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed:\n{proc.stderr[-4000:]}")
