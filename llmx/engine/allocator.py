"""Host memory that a CPU training step frees stays in the process for the next step.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB by its own adjustment) with a fresh
mmap and unmaps them when freed, and hands the free top of its heap back to the kernel beyond its trim
threshold. A training step allocates and frees the same large tensors every step (activations, logits,
gradients: about 1 GB a step for a 135M-parameter model on 1,024 tokens), so every step faulted all of
them in again, page by page: 200k-330k page faults and 0.45-1.0 s of system time in a 9 s step at 1
thread (SmolLM2-135M, bench/real.py), on top of the time the kernel spends zeroing those pages. With both
thresholds raised the freed blocks are reused: about 28k faults and 0.02 s a step, the same peak
resident memory. What the process holds after its peak is not given back until it exits: the right
trade for a training process. PyTorch users get the same by preloading jemalloc or tcmalloc; a Python
process can only change glibc's own settings, with mallopt, which acts on every later allocation.

Leaves alone: a C library other than glibc, and a process whose user set malloc's thresholds
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES).
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap (and go back to it)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether they were set."""
    user_set = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
    if not sys.platform.startswith("linux") or any(name in os.environ for name in user_set):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has mallopt as a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc keeps freed blocks up to %d bytes for reuse: %s", MMAP_THRESHOLD, done)
    return done
