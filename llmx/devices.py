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


def math_threads(setting) -> int:
    """Math threads for this rank: `setting` when a number; for "auto", the cores this process may
    run on (its affinity: taskset, Slurm's cgroup) shared evenly by the ranks on this node.
    Paddle itself leaves every process one thread (it sets OMP_NUM_THREADS=1 when unset)."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = int(os.environ.get("PADDLE_LOCAL_SIZE", "1"))  # set by paddle.distributed.launch and for Slurm tasks
    return max(1, cores // ranks_here)


def idle_threads_sleep() -> None:
    """Let idle OpenMP threads sleep as soon as a parallel region ends (OMP_WAIT_POLICY=PASSIVE), unless the
    user chose a policy. A training process holds two OpenMP runtimes: Intel's (MKL, oneDNN and Paddle's kernels)
    and GNU's (llmx's kernels, csrc/, and Paddle loads it too). By default each one's threads spin after a region
    (Intel's 200 ms, GNU's up to 300k spins), and the spinning threads of one take the cores from the working
    threads of the other: at 2 threads a step of SmolLM2-135M (4 x 256 tokens) took 6.6 s (full) and 5.4 s
    (LoRA), no faster than at 1 thread, with twice the CPU time; passive, 4.6 s and 3.3 s (2 cores; GOMP_SPINCOUNT=0
    alone gave 4.9 s). Both runtimes read the policy when paddle's import loads them, so this runs before it (launch.py,
    every rank and Slurm task); one thread has no idle threads and is unaffected."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

