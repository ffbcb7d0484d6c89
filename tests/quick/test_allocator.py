"""llmx.engine.allocator: glibc's malloc keeps a training step's freed blocks for the next step, unless the user
set malloc's thresholds themselves (its effect, fewer page faults per step, is measured in bench/real.py)."""
import platform

import pytest

from llmx.engine.allocator import keep_freed_memory


def test_a_threshold_the_user_set_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_takes_the_thresholds(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() is True
