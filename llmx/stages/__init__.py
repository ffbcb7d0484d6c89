"""Stage runners, one module per runner, registered by name.

A runner module imports paddle only inside its functions, so looking one up
(and running its optional paddle-free `prepare(cfg)` check of the inputs) stays cheap.

    @register("sft")
    def run(cfg, ctx) -> dict:   # returns summary metrics
"""
from __future__ import annotations

import importlib
from typing import Callable

_RUNNERS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn: Callable) -> Callable:
        _RUNNERS[name] = fn
        return fn

    return deco


def load_stage(name: str):
    """Import the module of runner `name`; it registers itself on import."""
    module = importlib.import_module(f"llmx.stages.{name}")
    if name not in _RUNNERS:
        raise RuntimeError(f"llmx.stages.{name} did not register a runner named {name!r}")
    return module


def get_runner(name: str) -> Callable:
    load_stage(name)
    return _RUNNERS[name]
