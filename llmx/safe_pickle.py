"""The one restricted unpickler for every pickle llmx or PaddleNLP loads from a path a user gave.

A pickle can call any importable function while it loads (`os.system` included), so a model or run
directory someone shared could run code. The pickles llmx meets are `paddle.save` files (model weights
`.pdparams`, optimizer `.pdopt`, scheduler and RNG state): nested dicts, lists and tuples of numbers,
strings and numpy arrays, plus the few Paddle types listed below. This unpickler builds those and refuses
every other global before anything of it runs. Python's pickle has no such mode and neither Paddle nor
PaddleNLP offers one (their loaders call `pickle.load`), hence this module; llmx.compat routes their
loaders through it. `model.trust_pickle=true` (`trusting()`) is the one explicit way around it.
Paddle-free.
"""
from __future__ import annotations

import builtins
import functools
import io
import logging
import pickle
from contextlib import contextmanager
from typing import Any, BinaryIO

from llmx.errors import UserError

log = logging.getLogger("llmx")


class PickledCodeError(UserError):
    """A pickle asked for a global outside the allowed data types."""


@functools.lru_cache(maxsize=None)
def _numpy_globals() -> dict:
    import numpy as np
    from numpy.core import multiarray, numeric

    # numpy >= 2 writes `numpy._core...` into pickles; a file written there must load here too.
    found = {}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(core, "_reconstruct")] = multiarray._reconstruct
        found[(core, "scalar")] = multiarray.scalar
    for core in ("numpy.core.numeric", "numpy._core.numeric"):
        found[(core, "_frombuffer")] = numeric._frombuffer  # how protocol 5 writes an array
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    return found


def _paddle_eval(source: str):
    """`paddle.save` pickles a DenseTensor as `eval('data', {'data': array})`; that one call is data."""

    def tensor_data(expression="", namespace=None, *_):
        if expression != "data" or not isinstance(namespace, dict) or set(namespace) != {"data"}:
            raise PickledCodeError(f"{source}: refusing to unpickle builtins.eval({str(expression)[:40]!r}) (pickled "
                                   f"code: not paddle.save's tensor form)")
        return namespace["data"]

    return tensor_data


def _generator_state():
    # Paddle's RNG state (PaddleNLP's rng_state.pth): a plain data object rebuilt from integers and bytes.
    from paddle.base.libpaddle import GeneratorState

    return GeneratorState


_BUILTINS = {name: getattr(builtins, name)
             for name in ("dict", "list", "tuple", "set", "frozenset", "complex", "bytearray", "slice", "range")}


def _allowed(module: str, name: str, source: str):
    if module == "__builtin__":  # protocol 2 names Python 3's builtins as Python 2's
        module = "builtins"
    if module == "builtins" and name in _BUILTINS:
        return _BUILTINS[name]
    if (module, name) == ("builtins", "eval"):
        return _paddle_eval(source)
    if (module, name) == ("collections", "OrderedDict"):
        from collections import OrderedDict

        return OrderedDict
    if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
        return _latin1_bytes
    if (module, name) == ("paddle.base.libpaddle", "GeneratorState"):
        return _generator_state()
    return _numpy_globals().get((module, name))


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


_trusted = False


@contextmanager
def trusting(trust: bool = True):
    """Within it, pickles load unrestricted (model.trust_pickle=true): logged, since code may run."""
    global _trusted
    before, _trusted = _trusted, trust
    try:
        yield
    finally:
        _trusted = before


def set_trust(trust: bool) -> None:
    """For a whole run (model.trust_pickle)."""
    global _trusted
    _trusted = trust
    if trust:
        log.warning("model.trust_pickle=true: pickles (.pdparams, .pdopt, RNG state) load unrestricted and may "
                    "run code; only do this for files you trust")


def data_global(module: str, name: str, source: str):
    """The global a data pickle may name, or the one-line refusal naming the file and the global."""
    found = _allowed(module, name, source)
    if found is None:
        raise PickledCodeError(f"{source}: refusing to unpickle {module}.{name} (pickled code, not data); load only "
                               f"files you trust, and then with model.trust_pickle=true")
    return found


def trusted() -> bool:
    return _trusted


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, source: str = "", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source or getattr(file, "name", "") or "<pickle>"

    def find_class(self, module: str, name: str):
        if _trusted:
            return super().find_class(module, name)
        return data_global(module, name, self.source)

    def persistent_load(self, pid):
        raise PickledCodeError(f"{self.source}: refusing a pickle with external references ({pid!r})")


def load(file: BinaryIO, *, source: str = "", **kwargs) -> Any:
    """`pickle.load`, restricted to data (unless trusted)."""
    return RestrictedUnpickler(file, source=source, **kwargs).load()


def loads(data: bytes, *, source: str = "", **kwargs) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), source=source, **kwargs).load()
