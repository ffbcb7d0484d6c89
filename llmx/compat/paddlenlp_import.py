"""PaddleNLP's import (paddlenlp 3.0.0b4), kept apart from llmx.compat.paddlenlp because it must stay paddle-free.

`import paddlenlp` imports every application PaddleNLP has: `paddlenlp/__init__.py` imports `dataaug`, `taskflow`
and `server` (information extraction, FastAPI), and `paddlenlp.trainer` imports its model-compression helpers, whose
`paddlenlp.metrics` pulls seqeval and through it scikit-learn and SciPy's statistics. None of them is used by a
training, alignment or serving run, and together they cost 0.9 s in every process that imports paddlenlp (2.15 ->
1.23 s on this project's 2-core machines: `python -X importtime -c "import paddlenlp"`): every launch, every rank of
every multi-process run, every Slurm task.

`defer_unused_imports()` installs an import hook that gives those modules a placeholder and imports the real module
the first time anything in it is used (an attribute, a submodule, or a call of the names paddlenlp's own
`__init__` takes from them), so nothing changes for code that does use them. Can go when PaddleNLP imports its
applications lazily (PaddleFormers, its successor, no longer imports taskflow at all).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

# module -> the names other modules take from it at import time (`from module import name`), which stay callable
DEFERRED = {
    "paddlenlp.dataaug": (),
    "paddlenlp.taskflow": ("Taskflow",),
    "paddlenlp.server": ("SimpleServer",),
    # paddlenlp.metrics.chunk's only use of seqeval; importing seqeval.metrics imports scikit-learn
    "seqeval.metrics": (),
    "seqeval.metrics.sequence_labeling": ("get_entities",),
    "paddlenlp.metrics.mrr": ("MRR",),  # imports scikit-learn for its distance
}
_loaded: set[str] = set()


class _Placeholder(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(load(self.__name__), attr)


def load(name: str) -> types.ModuleType:
    """The real module behind a placeholder (imported now if it was not)."""
    _loaded.add(name)
    if isinstance(sys.modules.get(name), _Placeholder):
        del sys.modules[name]
    parent, _, child = name.rpartition(".")
    if parent in DEFERRED:
        load(parent)  # a package first: its __init__ may import this very module
    module = importlib.import_module(name)
    setattr(sys.modules[parent], child, module)
    return module


def _deferred_call(name: str, attr: str):
    def call(*args, **kwargs):
        return getattr(load(name), attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    return call


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        parent = name.rpartition(".")[0]
        if name in DEFERRED and name not in _loaded:
            real = importlib.machinery.PathFinder.find_spec(name, path)
            if real is None:
                return None
            spec = importlib.machinery.ModuleSpec(name, self, is_package=real.submodule_search_locations is not None)
            if real.submodule_search_locations is not None:
                spec.submodule_search_locations = list(real.submodule_search_locations)
            return spec
        if parent in DEFERRED and parent not in _loaded:
            load(parent)  # a submodule of a placeholder: the real package comes first
        return None

    def create_module(self, spec):
        module = _Placeholder(spec.name)
        for attr in DEFERRED[spec.name]:
            setattr(module, attr, _deferred_call(spec.name, attr))
        return module

    def exec_module(self, module):
        if module.__name__ == "paddlenlp.dataaug":
            # dataaug was paddlenlp's first import of prompt -> trainer -> peft; other orders hit a circular import
            importlib.import_module("paddlenlp.prompt")


def defer_unused_imports() -> None:
    """Install the hook (idempotent); a no-op once paddlenlp is imported."""
    if "paddlenlp" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
