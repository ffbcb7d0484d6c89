"""The memory a run measured, per rank, to set beside `plan`'s estimate (llmx.plan) in summary.json.

On CPU the figure is the process's peak resident memory above what it held right after importing paddle
and paddlenlp (`mark_baseline`, called there): what the run itself added, the libraries' own code and
tables left out, as `plan` leaves them out. The peak is the kernel's high-water mark (VmHWM), which
`mark_baseline` resets (/proc/self/clear_refs, Linux >= 4.0), so a transient of the imports themselves
does not count; where the reset is refused the high-water mark since the process started is used. On GPU
the figure is paddle's max_memory_allocated (tensors only, as `plan` counts them).
"""
from __future__ import annotations

import resource
from pathlib import Path
from typing import List, Optional, Tuple

GIB = 2**30
_BASELINE: Optional[int] = None  # bytes resident right after the heavy imports


def _status_bytes(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _peak_resident() -> int:
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def mark_baseline() -> None:
    """Remember this process's resident memory now (right after paddle and paddlenlp are imported) and restart
    the high-water mark from here."""
    global _BASELINE
    _BASELINE = _status_bytes("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        pass


def tensors_peak_gib() -> Optional[float]:
    """CPU: the peak of paddle's own count of allocated host memory (tensors only), which separates what `plan`
    counts from the process's other memory in the RSS figure."""
    try:
        from paddle.base import core

        return core.host_memory_stat_peak_value("Allocated", 0) / GIB
    except (ImportError, AttributeError, RuntimeError):
        return None


def baseline_gib() -> Optional[float]:
    return None if _BASELINE is None else _BASELINE / GIB


def peak_gib(device: str) -> Optional[float]:
    """This rank's peak: tensors allocated on a GPU, or resident memory above the baseline on CPU."""
    if device == "gpu":
        import paddle

        return paddle.device.cuda.max_memory_allocated() / GIB
    if _BASELINE is None:
        return None
    return max(_peak_resident() - _BASELINE, 0) / GIB


def peaks_per_rank(device: str, world_size: int, pipeline_stage: int,
                   data_rank: int) -> Tuple[List[Optional[float]], List[int], List[int]]:
    """Every rank's `peak_gib`, pipeline stage and data-parallel rank, in rank order (a collective: every rank
    calls it)."""
    mine = peak_gib(device)
    if world_size == 1:
        return [mine], [pipeline_stage], [data_rank]
    import paddle
    import paddle.distributed as dist

    gathered: list = []
    dist.all_gather(gathered, paddle.to_tensor([-1.0 if mine is None else mine, float(pipeline_stage), float(data_rank)],
                                               dtype="float64"))
    rows = [t.numpy().tolist() for t in gathered]
    return ([None if peak < 0 else peak for peak, _, _ in rows], [int(stage) for _, stage, _ in rows],
            [int(dp) for _, _, dp in rows])
