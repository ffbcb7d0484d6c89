"""Merge recipes, paddle-free: the stage's command-line form and mergekit's YAML form both become
one `Recipe`, checked before anything heavy is imported.

mergekit's YAML keys are read as they are (`merge_method`, `base_model`, `models` with per-model
`parameters`, top-level `parameters`, `slices` with `sources`/`layer_range`, `dtype`,
`tokenizer_source`). A parameter's value is a number, a gradient (a list of numbers interpolated
over the layers, as mergekit does), or a list of `{filter: substring, value: ...}` entries where the
first entry whose filter occurs in the tensor's name wins and an entry without a filter is the default.
Differences from mergekit: `model` must be a local directory (model, adapter or llmx run; llmx never
downloads); `lambda`, `int8_mask` and `embed_slerp` are not read; slices cover passthrough only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llmx.errors import ConfigError

# method -> (needs a base model, fewest models, paddlenlp.mergekit has it)
METHODS = {
    "linear": (False, 1, True),
    "slerp": (True, 1, True),  # base_model = the t=0 end, one model = the t=1 end
    "task_arithmetic": (True, 1, False),
    "ties": (True, 1, True),
    "dare_linear": (True, 1, True),
    "dare_ties": (True, 1, True),
    "della": (True, 1, True),
    "della_linear": (True, 1, True),
    "breadcrumbs": (True, 1, False),
    "model_stock": (True, 2, False),
    "passthrough": (False, 0, False),
}
# parameter -> default (None: required where the method uses it)
DEFAULTS = {"weight": 1.0, "density": 1.0, "t": 0.5, "epsilon": 0.14, "gamma": 0.01, "rescale": True,
            "consensus": "sum", "normalize": None, "seed": 0}
LAYER = re.compile(r"^(.*?\.layers\.)(\d+)(\..*)$")


@dataclass
class Recipe:
    method: str
    models: list[str]  # as the user named them (model, adapter or run directories)
    base_model: Optional[str] = None
    model_params: list[dict] = field(default_factory=list)  # per model (weight, density, ...)
    params: dict = field(default_factory=dict)  # global, each value scalar / gradient / filter list
    slices: list[tuple[str, int, int]] = field(default_factory=list)  # passthrough: (model, start, end)
    dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None  # None: must all match; "base" or a model path

    def inputs(self) -> list[str]:
        names = list(self.models) + ([self.base_model] if self.base_model else []) + [s[0] for s in self.slices]
        return list(dict.fromkeys(names))

    def to_dict(self) -> dict:
        return {"merge_method": self.method, "base_model": self.base_model,
                "models": [{"model": m, "parameters": p} for m, p in zip(self.models, self.model_params)],
                "parameters": self.params, "slices": [{"model": m, "layer_range": [a, b]} for m, a, b in self.slices],
                "dtype": self.dtype, "tokenizer_source": self.tokenizer_source}


def _where(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def check(recipe: Recipe, where: str) -> Recipe:
    if recipe.method not in METHODS:
        raise _where(where, f"merge method {recipe.method!r} unknown; allowed: {', '.join(METHODS)}")
    needs_base, fewest, _ = METHODS[recipe.method]
    if recipe.method == "slerp" and not recipe.base_model and len(recipe.models) == 2:
        recipe.base_model, recipe.models = recipe.models[0], recipe.models[1:]  # models=[A, B]: A is t=0
        recipe.model_params = recipe.model_params[1:]
    if needs_base and not recipe.base_model:
        raise _where(where, f"{recipe.method} needs a base model (stage.base_model / base_model:)")
    if len(recipe.models) < fewest:
        raise _where(where, f"{recipe.method} needs at least {fewest} model(s), got {len(recipe.models)}")
    if recipe.method == "slerp" and len(recipe.models) != 1:
        raise _where(where, f"slerp merges two models (base_model and one other), got {len(recipe.models) + 1}")
    if recipe.method == "passthrough":
        if not recipe.slices:
            raise _where(where, "passthrough needs slices (model + layer_range [start, end))")
        for m, a, b in recipe.slices:
            if not 0 <= a < b:
                raise _where(where, f"slice of {m}: layer_range [{a}, {b}] must have 0 <= start < end")
    elif recipe.slices:
        raise _where(where, f"slices are for passthrough only, not {recipe.method}")
    for name in recipe.params:
        if name not in DEFAULTS:
            raise _where(where, f"unknown merge parameter {name!r}; known: {', '.join(DEFAULTS)}")
    for p in recipe.model_params:
        for name in p:
            if name not in DEFAULTS:
                raise _where(where, f"unknown merge parameter {name!r}; known: {', '.join(DEFAULTS)}")
    if recipe.dtype not in (None, "float32", "bfloat16", "float16"):
        raise _where(where, f"dtype {recipe.dtype!r}; allowed: float32, bfloat16, float16")
    for p in [recipe.params, *recipe.model_params]:
        for k in ("density", "t"):
            for v in _values(p.get(k)):
                if not 0.0 <= v <= 1.0:
                    raise _where(where, f"{k}={v}: must be in [0, 1]")
    for name in recipe.inputs():
        if not Path(name).is_dir():
            raise _where(where, f"model {name}: no such directory (local paths only: llmx never downloads)")
    return recipe


def _values(spec: Any) -> list[float]:
    if spec is None or isinstance(spec, (bool, str)):
        return []
    if isinstance(spec, (int, float)):
        return [float(spec)]
    out = []
    for item in spec:
        out += _values(item.get("value") if isinstance(item, dict) else item)
    return out


def from_mergekit(data: dict, where: str) -> Recipe:
    """A mergekit YAML (already loaded) as a Recipe."""
    if not isinstance(data, dict) or "merge_method" not in data:
        raise _where(where, "not a mergekit recipe (no merge_method:)")
    models, params, slices = [], [], []
    for entry in data.get("models") or []:
        models.append(str(entry["model"]))
        params.append(dict(entry.get("parameters") or {}))
    for s in data.get("slices") or []:
        for src in s.get("sources") or [s]:
            rng = src.get("layer_range")
            if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
                raise _where(where, f"slice {src}: needs layer_range: [start, end]")
            slices.append((str(src["model"]), int(rng[0]), int(rng[1])))
    unknown = set(data) - {"merge_method", "base_model", "models", "parameters", "slices", "dtype", "tokenizer_source",
                           "out_dtype", "tokenizer"}
    if unknown:
        raise _where(where, f"unknown recipe key(s) {', '.join(sorted(unknown))}")
    tok = data.get("tokenizer_source")
    return check(Recipe(method=str(data["merge_method"]), models=models, base_model=data.get("base_model"),
                        model_params=params, params=dict(data.get("parameters") or {}), slices=slices,
                        dtype=data.get("dtype"), tokenizer_source=str(tok) if tok else None), where)


def resolve_param(spec: Any, tensor: str, num_layers: int) -> Any:
    """The value of one parameter for one tensor: filters first, then gradients over the layers."""
    if isinstance(spec, list) and spec and all(isinstance(e, dict) for e in spec):
        default = None
        for entry in spec:
            if "filter" not in entry:
                default = entry.get("value")
            elif str(entry["filter"]) in tensor:
                return resolve_param(entry.get("value"), tensor, num_layers)
        return resolve_param(default, tensor, num_layers)
    if isinstance(spec, list):  # a gradient: values spread evenly from the first layer to the last
        if len(spec) == 1 or num_layers <= 1:
            return float(spec[0])
        m = LAYER.match(tensor)
        # tensors outside the layers: embeddings take the first value, the rest (final norm, head) the last
        pos = int(m.group(2)) / (num_layers - 1) if m else (0.0 if "embed" in tensor else 1.0)
        x = pos * (len(spec) - 1)
        i = min(int(x), len(spec) - 2)
        return float(spec[i]) + (x - i) * (float(spec[i + 1]) - float(spec[i]))
    return spec
