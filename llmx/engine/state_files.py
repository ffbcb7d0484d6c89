"""Training state that llmx writes itself (the RL loop's actor, critic, optimizers, schedulers, RNG), without
pickle: tensors in safetensors, everything else in JSON. A run directory someone shares then holds nothing
that runs code when resumed (`paddle.save` pickles; llmx.safe_pickle guards what others wrote that way).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from safetensors.paddle import load_file, save_file

# Nested dicts of tensors (an optimizer's master_weights) are flattened into one safetensors namespace under
# `outer<SEP>inner`; no parameter or optimizer key holds it.
SEP = "::"
VALUES = "llmx_values"  # the safetensors metadata entry holding the JSON of the non-tensor entries


def save_state(state: dict, path: Path) -> None:
    """`state` (str keys; tensor, dict of tensors, or JSON values) as one safetensors file, written atomically."""
    tensors: dict[str, paddle.Tensor] = {}
    values: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, paddle.Tensor):
            tensors[key] = value.contiguous()
        elif isinstance(value, dict) and value and all(isinstance(v, paddle.Tensor) for v in value.values()):
            tensors.update({f"{key}{SEP}{inner}": v.contiguous() for inner, v in value.items()})
        else:
            values[key] = value
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={VALUES: json.dumps(values)})
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        values = json.loads((f.metadata() or {}).get(VALUES, "{}"))
    state: dict[str, Any] = dict(values)
    for key, tensor in load_file(str(path), device="cpu").items():
        outer, sep, inner = key.partition(SEP)
        if sep:
            state.setdefault(outer, {})[inner] = tensor
        else:
            state[key] = tensor
    return state


def rng_state() -> dict:
    """Paddle's and numpy's generators as JSON (Paddle's GeneratorState pickles as seed, offset and ints)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"paddle": [list(s.__getstate__()) for s in paddle.get_rng_state()],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def restore_rng(state: dict) -> None:
    from paddle.base.libpaddle import GeneratorState

    generators = []
    for saved in state["paddle"]:
        generator = GeneratorState.__new__(GeneratorState)  # as pickle rebuilds it: no public constructor
        generator.__setstate__(tuple(saved))
        generators.append(generator)
    paddle.set_rng_state(generators)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
