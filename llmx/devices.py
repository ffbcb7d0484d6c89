"""The GPUs this Paddle build could use, found without importing paddle."""
from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata
from typing import List


def cuda_build() -> bool:
    """Is the installed paddle the CUDA build (known without importing paddle)?"""
    try:
        metadata.version("paddlepaddle-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def visible_gpus() -> List[str]:
    """Ids of the GPUs this paddle build could use, found without importing paddle (none on the
    CPU wheel): CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    if not cuda_build():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    count = sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0
    return [str(i) for i in range(count)]
