"""Device selection, seeding and the distributed world as seen by this process."""
from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass

import numpy as np
import paddle
import paddle.distributed as dist

from llmx.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" or "gpu"
    rank: int
    world_size: int
    threads: int = 1  # math threads of this rank (runtime.threads)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_names(self) -> list[str]:
        if self.device == "gpu":
            return [paddle.device.cuda.get_device_name(i) for i in range(paddle.device.cuda.device_count())]
        return ["cpu"]


def pick_device(requested: str) -> str:
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        raise ConfigError("device='gpu': no CUDA device visible to this paddle build (allowed here: auto, cpu)")
    return "gpu" if requested == "gpu" or (requested == "auto" and has_gpu) else "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def set_math_threads(threads: int) -> None:
    """Size the math library's pools (MKL and OpenMP) for this process. Through Paddle's own
    setter rather than OMP_NUM_THREADS: that takes effect after import, and Paddle prints a
    warning at import for any OMP_NUM_THREADS above 1."""
    from paddle.base import core

    core.set_num_threads(threads)  # Intel's OpenMP (Paddle's kernels) and MKL
    try:  # llmx's own kernels (csrc/) are built with GNU OpenMP, whose count Paddle's setter does not reach
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(threads)
    except (OSError, AttributeError):  # no GNU OpenMP here: no kernel of ours uses it either
        pass


def init_runtime(requested_device: str, dtype: str, threads: int = 1) -> Runtime:
    device = pick_device(requested_device)
    paddle.set_device(device)
    if device == "cpu" and dtype != "float32":
        raise ConfigError(f"model.dtype={dtype!r}: half precision training needs a GPU (use float32 on CPU)")
    set_math_threads(threads)
    return Runtime(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(), threads=threads)
