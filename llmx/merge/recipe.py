"""Merge recipes, paddle-free: the stage's command-line form and mergekit's YAML form both become
one `Recipe`, checked before anything heavy is imported.

mergekit's YAML keys are read as mergekit 0.1.4 reads them (`merge_method`, `base_model`, `models`
with per-model `parameters`, top-level `parameters`, passthrough `slices` with `sources`,
`layer_range` and per-source/per-slice `parameters`, `dtype`, `tokenizer_source`), with mergekit's
defaults per method (METHOD_DEFAULTS). A parameter's value is a number, a gradient (a list of numbers
interpolated over a slice's layers), or a list of `{filter: substring, value: ...}` entries of which
the first that applies wins (no filter or `*` applies to every tensor); a per-model value that does
not apply to a tensor falls back to the top-level one, then to the default.
Differences from mergekit: `model` must be a local directory (model, adapter or llmx run; llmx never
downloads); model_stock's `filter_wise` is refused; filters are matched against llmx's (PaddleNLP) tensor names; `slices` are passthrough's
only; `modules`, `tokenizer:` and `chat_template` are refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llmx.errors import ConfigError

# method -> (needs a base model, fewest models other than the base, paddlenlp.mergekit has it)
METHODS = {
    "linear": (False, 1, True),
    "slerp": (True, 1, True),  # base_model = the t=0 end, one other model = the t=1 end
    "task_arithmetic": (True, 1, False),
    "ties": (True, 1, True),
    "dare_linear": (True, 1, True),
    "dare_ties": (True, 1, True),
    "della": (True, 1, True),
    "della_linear": (True, 1, True),
    "breadcrumbs": (True, 1, False),
    "breadcrumbs_ties": (True, 1, False),
    "model_stock": (True, 2, False),
    "passthrough": (False, 0, False),
}
# parameter -> default, for every method; METHOD_DEFAULTS holds mergekit's own per method
DEFAULTS = {"weight": 1.0, "density": 1.0, "t": 0.5, "epsilon": 0.15, "gamma": 0.01, "lambda": 1.0,
            "rescale": False, "normalize": False, "int8_mask": False, "consensus": "sum", "scale": None,
            "seed": 0}
METHOD_DEFAULTS = {
    "linear": {"normalize": True},
    "ties": {"normalize": True},
    "dare_linear": {"rescale": True},
    "dare_ties": {"rescale": True},
    "della": {"normalize": True, "rescale": True},
    "della_linear": {"rescale": True},
}
LAYER = re.compile(r"^(.*?\.layers\.)(\d+)(\..*)$")


def defaults(method: str) -> dict:
    """Every parameter's default for `method`, as mergekit 0.1.4 has it."""
    return {**DEFAULTS, **METHOD_DEFAULTS.get(method, {})}


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
    slice_params: list[dict] = field(default_factory=list)  # per slice: its source's parameters over the slice's

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
    recipe.model_params = recipe.model_params or [{} for _ in recipe.models]
    if recipe.method == "slerp" and not recipe.base_model and len(recipe.models) == 2:
        recipe.base_model = recipe.models[0]  # models=[A, B]: A is t=0
    if needs_base and recipe.base_model in recipe.models and len(set(recipe.models)) > 1:
        # mergekit's recipes list the base among the models too (only the base: the merge is the base)
        keep = [i for i, m in enumerate(recipe.models) if m != recipe.base_model]
        recipe.models = [recipe.models[i] for i in keep]
        recipe.model_params = [recipe.model_params[i] for i in keep]
    if needs_base and not recipe.base_model:
        raise _where(where, f"{recipe.method} needs a base model (stage.base_model / base_model:)")
    if len(recipe.models) < fewest:
        raise _where(where, f"{recipe.method} needs at least {fewest} model(s)"
                     f"{' besides the base' if needs_base else ''}, got {len(recipe.models)}")
    if recipe.method == "slerp" and len(recipe.models) != 1:
        raise _where(where, f"slerp merges two models (base_model and one other), got {len(recipe.models) + 1}")
    if recipe.method == "passthrough":
        if not recipe.slices:
            raise _where(where, "passthrough needs slices (model + layer_range [start, end))")
        for m, a, b in recipe.slices:
            if not 0 <= a < b:
                raise _where(where, f"slice of {m}: layer_range [{a}, {b}] must have 0 <= start < end")
    elif recipe.slices:
        raise _where(where, f"slices are for passthrough only, not {recipe.method} (merge whole models with models:)")
    for p in [recipe.params, *recipe.model_params, *recipe.slice_params]:
        for name in p:
            if name in REFUSED_PARAMS:
                raise _where(where, f"llmx does not do mergekit's {name} ({REFUSED_PARAMS[name]})")
            if name not in DEFAULTS:
                raise _where(where, f"unknown merge parameter {name!r}; known: {', '.join(DEFAULTS)}")
    if recipe.dtype not in (None, "float32", "bfloat16", "float16"):
        raise _where(where, f"dtype {recipe.dtype!r}; allowed: float32, bfloat16, float16")
    for p in [recipe.params, *recipe.model_params]:
        for k in ("density", "t"):
            for v in _values(p.get(k)):
                if not 0.0 <= v <= 1.0:
                    raise _where(where, f"{k}={v}: must be in [0, 1]")
        if recipe.method.startswith("della"):  # mergekit's bounds: keep probabilities density -/+ epsilon in (0, 1)
            eps = _values(p.get("epsilon", recipe.params.get("epsilon", DEFAULTS["epsilon"])))
            for d in _values(p.get("density", recipe.params.get("density"))):
                for e in eps:
                    if d < 1.0 and not (0.0 < d - e and d + e < 1.0):
                        raise _where(where, f"della: density {d} -/+ epsilon {e} must lie in (0, 1)")
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


RECIPE_KEYS = {"merge_method", "base_model", "models", "parameters", "slices", "dtype", "tokenizer_source", "out_dtype"}
REFUSED_PARAMS = {"filter_wise": "model_stock per row: PaddleNLP's layouts transpose the rows of linear weights",
                  "embed_slerp": "slerp of embeddings of different vocabularies"}
REFUSED_KEYS = {"modules": "modules (merge whole models, or passthrough slices)",
                "tokenizer": "tokenizer: (token surgery; use tokenizer_source: base or a model path)",
                "chat_template": "chat_template (the output takes its tokenizer's)"}


def from_mergekit(data: dict, where: str) -> Recipe:
    """A mergekit YAML (already loaded) as a Recipe."""
    if not isinstance(data, dict) or "merge_method" not in data:
        raise _where(where, "not a mergekit recipe (no merge_method:)")
    for k, what in REFUSED_KEYS.items():
        if data.get(k) is not None:
            raise _where(where, f"llmx does not do mergekit's {what}")
    unknown = set(data) - RECIPE_KEYS - set(REFUSED_KEYS)
    if unknown:
        raise _where(where, f"unknown recipe key(s) {', '.join(sorted(unknown))}")
    models, params, slices, slice_params = [], [], [], []
    for entry in data.get("models") or []:
        models.append(str(entry["model"]))
        params.append(dict(entry.get("parameters") or {}))
    for s in data.get("slices") or []:
        sources = s.get("sources") or [s]
        if len(sources) != 1:
            raise _where(where, f"slice {s}: passthrough takes one source per slice, got {len(sources)}")
        rng = sources[0].get("layer_range")
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
            raise _where(where, f"slice {sources[0]}: needs layer_range: [start, end]")
        slices.append((str(sources[0]["model"]), int(rng[0]), int(rng[1])))
        # a source's own parameters first, then its slice's (mergekit's lookup order)
        slice_params.append({**(s.get("parameters") or {}), **(sources[0].get("parameters") or {})})
    tok = data.get("tokenizer_source")
    return check(Recipe(method=str(data["merge_method"]), models=models, base_model=data.get("base_model"),
                        model_params=params, params=dict(data.get("parameters") or {}), slices=slices,
                        dtype=data.get("dtype"), tokenizer_source=str(tok) if tok else None,
                        slice_params=slice_params), where)


def layer_position(tensor: str, num_layers: int, first_layer: int = 0) -> float:
    """Where a tensor sits for a gradient, as mergekit places it: a layer's tensors at (layer - first) /
    (layers - 1) of their slice (1 in a one-layer slice), every tensor outside the layers at 0."""
    m = LAYER.match(tensor)
    if not m:
        return 0.0
    return (int(m.group(2)) - first_layer) / (num_layers - 1) if num_layers > 1 else 1.0


def resolve_param(spec: Any, tensor: str, position: float) -> Any:
    """The value of one parameter for one tensor at gradient position `position` in [0, 1]: the first filter
    entry that applies, a gradient interpolated at `position`, or the value itself. None when no entry applies."""
    if isinstance(spec, list) and spec and all(isinstance(e, dict) for e in spec):
        for entry in spec:
            f = entry.get("filter")
            if f is None or f == "*" or str(f) in tensor:
                return resolve_param(entry.get("value"), tensor, position)
        return None
    if isinstance(spec, list) and spec:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
            x = position * (len(spec) - 1)
            i = int(x)
            j = min(len(spec) - 1, i + 1)
            return (1 - (x - i)) * float(spec[i]) + (x - i) * float(spec[j])
        return spec[int(position * (len(spec) - 1))]  # booleans or words: the nearest entry below
    return spec
