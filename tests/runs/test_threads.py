"""runtime.threads reaches both OpenMP runtimes in a process: Intel's, which Paddle's kernels and MKL use,
and GNU's, which llmx's own kernels (csrc/) are built with."""
from __future__ import annotations

import ctypes
import os


def test_math_threads_reach_both_openmp_runtimes():
    import paddle

    from llmx.engine.runtime import set_math_threads

    intel = ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so"))
    gnu = ctypes.CDLL("libgomp.so.1")
    try:
        for n in (1, 3):
            set_math_threads(n)
            assert (intel.omp_get_max_threads(), gnu.omp_get_max_threads()) == (n, n)
    finally:
        set_math_threads(len(os.sched_getaffinity(0)))  # what runtime.threads=auto gives this one process
