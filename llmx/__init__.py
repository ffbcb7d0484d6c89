"""llmx: a Hydra-configured experiment framework for LLMs on PaddlePaddle.

Importing this package must stay cheap: config composition, `--help`, `diff` and
validation never import paddle. Heavy modules live under llmx.engine/stages.
"""

import os

__version__ = "0.1.0"

# Paddle's CPU wheel ships MKL 2019 (libmklml_intel), which runs its SSE code path on every CPU
# that is not Intel's: on AMD EPYC its float32 GEMM does 25 GFLOPS per core instead of 74
# (measured here). That MKL still honours this switch to its AVX2 path (MKL 2020.1+ removed it);
# MKL reads it at its first call, so setting it here, before any paddle op, covers every llmx
# process and the ranks it starts. It changes nothing on Intel CPUs. Remove it when Paddle's wheel
# moves to an MKL without the vendor check. A value the user set is kept.
os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
