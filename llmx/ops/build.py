"""Building and loading the C++ kernels of csrc/ (paddle.utils.cpp_extension), once per cache key.

The cache directory (`$LLMX_OPS_CACHE`, default ~/.cache/llmx/ops) holds one folder per key: a
hash of the kernel sources, the Paddle version and commit, the compiler flags and the CPU's
instruction-set flags (the build uses -march=native, so a library built on one CPU must not be
loaded on another). A second process finds the folder and only loads it. Builds are safe when
several processes (ranks) start at once: the first takes a file lock and builds into a temp
folder that it renames into place when complete; the others wait on the lock and then load.

CUDA sources (csrc/gpu) join the build only when `nvcc` is on PATH and Paddle is a CUDA build
(never on the CPU-only machines llmx is tested on: untested).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional

from llmx.console import say
from llmx.errors import UserError

log = logging.getLogger(__name__)
MODULE = "llmx_ops"
CSRC = Path(__file__).resolve().parents[2] / "csrc"
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]  # lets llmx::vexp vectorise
LD_FLAGS = ["-fopenmp"]
GPU_OPS = ("rms_norm", "swiglu")  # the ops with CUDA kernels (csrc/gpu); the others run composed on a GPU
OPS = ("rms_norm", "add_rms_norm", "rope", "swiglu", "fused_linear_cross_entropy", "packed_attention")


class BuildError(UserError):
    """The kernels could not be built or loaded; the message says why in one line."""

    kind = "fused ops"


def cache_root() -> Path:
    return Path(os.environ.get("LLMX_OPS_CACHE") or Path.home() / ".cache" / "llmx" / "ops")


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def cuda_toolchain() -> bool:
    """Both nvcc and a CUDA build of Paddle exist: the CUDA kernels are tried."""
    import paddle

    return shutil.which("nvcc") is not None and paddle.is_compiled_with_cuda()


_cuda_error: dict = {"why": None}  # why the CUDA kernels did not build (the CPU ones were built alone)


def gpu_build() -> bool:
    """The loaded kernels include the CUDA ones."""
    return cuda_toolchain() and _cuda_error["why"] is None


def cuda_status() -> str:
    if not cuda_toolchain():
        return "no (no nvcc or a CPU build of Paddle)"
    return f"no: {_cuda_error['why']}" if _cuda_error["why"] else "yes"


def sources(gpu: Optional[bool] = None) -> list:
    gpu = gpu_build() if gpu is None else gpu
    found = sorted((CSRC / "cpu").glob("*.cc"))
    if gpu:
        found += sorted((CSRC / "gpu").glob("*.cu"))
    return found


def cache_key(gpu: Optional[bool] = None) -> str:
    import paddle

    h = hashlib.sha256()
    for f in sorted((CSRC / "cpu").glob("*")) + (sorted((CSRC / "gpu").glob("*")) if gpu or (gpu is None and gpu_build()) else []):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(f"{paddle.__version__} {paddle.version.commit} {CXX_FLAGS} {os.environ.get('CXX', '')} {cpu_flags()}".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _quiet(log_path: Path):
    """cpp_extension prints compiler output and chatter to the process's stdout/stderr: into a log."""
    with open(log_path, "ab") as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _library(folder: Path) -> Path:
    return folder / MODULE / f"{MODULE}.so"


def _cpp_extension():
    with warnings.catch_warnings():  # its import warns "No ccache found": a hint for Paddle's own developers
        warnings.simplefilter("ignore")
        import paddle.utils.cpp_extension as cpp_extension
        import paddle.utils.cpp_extension.extension_utils as extension_utils
    return cpp_extension, extension_utils


def _import(folder: Path):
    # paddle.utils.cpp_extension.load() always re-runs setup.py; importing an already built
    # library goes through the same (private) function load() ends with.
    return _cpp_extension()[1]._import_module_from_library(MODULE, str(folder / MODULE))


def _compile(tmp: Path, gpu: bool):
    """Builds and loads the kernels in `tmp`; returns the loaded module."""
    load = _cpp_extension()[0].load

    srcs = sources(gpu)
    if not srcs:
        raise BuildError(f"no kernel sources under {CSRC} (llmx installed without its csrc/ folder?)")
    # One translation unit for the C++ files: paddle/extension.h costs most of each file's
    # compile time, and setuptools compiles files one after another (5 files: ~50 s, one: ~15 s).
    unity = tmp / f"{MODULE}.cc"
    unity.write_text("".join(f'#include "{s}"\n' for s in srcs if s.suffix == ".cc"))
    srcs = [str(unity)] + [str(s) for s in srcs if s.suffix == ".cu"]
    import paddle

    libs = str(Path(paddle.__file__).parent / "libs")  # libmklml_intel (BLAS) for the CE's weight gradient
    ld_flags = LD_FLAGS + [f"-L{libs}", "-l:libmklml_intel.so", f"-Wl,-rpath,{libs}"]
    log = tmp / "build.log"
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX or install g++)")
    say("fused ops: building llmx's kernels into %s (once per machine and llmx version, ~20-40 s) ...", cache_root())
    try:
        with _quiet(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load(name=MODULE, sources=srcs, extra_cxx_cflags=CXX_FLAGS + (["-DLLMX_WITH_CUDA"] if gpu else []),
                        extra_ldflags=ld_flags,
                        extra_cuda_cflags=["-O3"] if gpu else None, build_directory=str(tmp))
    except BaseException as e:  # cpp_extension raises bare RuntimeErrors/SystemExit on compiler errors
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "error" in ln.lower()]
        why = lines[0].strip() if lines else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise BuildError(f"compiling csrc/ failed: {why}") from None


def build(force: bool = False):
    """The loaded kernel module, building it into the cache first where needed. Raises BuildError.
    When the CUDA sources fail to build (they are untested: no GPU where llmx is developed), the CPU
    kernels are built alone, so CPU tensors keep them; GPU tensors then take the composed ops."""
    if not gpu_build():
        return _build(False, force)
    try:
        return _build(True, force)
    except BuildError as e:
        _cuda_error["why"] = str(e)
        log.warning("fused ops: the CUDA kernels did not build, building the CPU kernels alone: %s", e)
        return _build(False, force)


def _build(gpu: bool, force: bool):
    key = cache_key(gpu)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank building the same key: wait for it
        if force and final.exists():
            shutil.rmtree(final)
        if not _library(final).is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            try:
                module = _compile(tmp, gpu)
                if not (_library(tmp)).is_file():
                    raise BuildError(f"the build wrote no {MODULE}.so (see {tmp / 'build.log'})")
                shutil.rmtree(tmp / MODULE / "build", ignore_errors=True)  # setuptools' object files
                os.rename(tmp, final)
                return module  # loaded from tmp (already registered: importing it again would find no new ops)
            except BuildError as e:
                keep = root / f"failed-{key}.log"
                if (tmp / "build.log").is_file():
                    shutil.copyfile(tmp / "build.log", keep)
                shutil.rmtree(tmp, ignore_errors=True)
                raise BuildError(f"{e} (log: {keep})" if keep.is_file() else str(e)) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    try:
        with _quiet(final / "load.log"):
            return _import(final)
    except Exception as e:
        raise BuildError(f"loading {_library(final)} failed: {e}") from None
