"""Model merging (stage=merge): linear, slerp, task_arithmetic, ties, dare_linear/dare_ties,
della/della_linear, breadcrumbs/breadcrumbs_ties, model_stock and passthrough (layer slices) over full models,
adapters (merged onto their base) or llmx run directories; from the command line or a
mergekit-style YAML (`stage.config=merge.yaml`). Streams tensor by tensor and writes
`model/` (a loadable checkpoint) plus `merge.json` (inputs with content hashes, method, parameters).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

from omegaconf import DictConfig, OmegaConf

from llmx.schema import require
from llmx.errors import ConfigError
from llmx.merge.recipe import METHODS, Recipe, check, from_mergekit

if TYPE_CHECKING:
    from llmx.merge.stream import Input


@dataclass
class Config:
    runner: str = "merge"
    method: str = "linear"
    models: List[str] = field(default_factory=list)
    weights: Optional[List[float]] = None  # one per model (default 1 each)
    base_model: Optional[str] = None
    t: float = 0.5  # slerp
    density: float = 1.0  # ties/dare/della/breadcrumbs: fraction of each task vector kept
    epsilon: float = 0.15  # della: spread of the keep probabilities (mergekit's default)
    gamma: float = 0.01  # breadcrumbs: fraction of the largest differences dropped
    consensus: str = "sum"  # ties sign election: sum | count
    normalize: Optional[bool] = None  # divide by the sum of weights (default: mergekit's for the method)
    rescale: Optional[bool] = None  # restore the sparsified task vector's L1 norm (default: mergekit's for the method)
    seed: int = 0  # random drops (dare, della)
    slices: List[Any] = field(default_factory=list)  # passthrough: [{model: A, layer_range: [0, 2]}, ...]
    dtype: Optional[str] = None  # output dtype (default: the base's / first model's)
    tokenizer_source: Optional[str] = None  # base | a model path; default: all tokenizers must match
    config: Optional[str] = None  # a mergekit YAML recipe; replaces the keys above
    output_dir: Optional[str] = None  # default: <run dir>/model


def recipe_of(cfg: DictConfig) -> Recipe:
    s = cfg.stage
    if s.config:
        import yaml

        path = Path(s.config)
        require(path.is_file(), "stage.config", s.config, "no such file (a mergekit-style YAML recipe)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML ({getattr(e, 'problem', e)})") from None
        return from_mergekit(data, str(path))
    require(s.method in METHODS, "stage.method", s.method, f"allowed: {', '.join(METHODS)}")
    require(s.consensus in ("sum", "count"), "stage.consensus", s.consensus, "allowed: sum, count")
    models = [str(m) for m in s.models]
    if s.weights is not None:
        require(len(s.weights) == len(models), "stage.weights", list(s.weights), f"needs one weight per model ({len(models)})")
    weights = list(s.weights) if s.weights is not None else [1.0] * len(models)
    slices = []
    for sl in OmegaConf.to_container(s.slices) if s.slices else []:
        rng = sl.get("layer_range") or sl.get("layers") if isinstance(sl, dict) else None
        require(isinstance(rng, list) and len(rng) == 2 and "model" in sl, "stage.slices", sl,
                "each slice is {model: PATH, layer_range: [start, end]}")
        slices.append((str(sl["model"]), int(rng[0]), int(rng[1])))
    params = {"t": s.t, "density": s.density, "epsilon": s.epsilon, "gamma": s.gamma, "consensus": s.consensus,
              "seed": s.seed}
    params.update({k: v for k, v in (("normalize", s.normalize), ("rescale", s.rescale)) if v is not None})
    return check(Recipe(method=s.method, models=models, base_model=s.base_model, model_params=[{"weight": w} for w in weights],
                        params=params, slices=slices, dtype=s.dtype, tokenizer_source=s.tokenizer_source), "stage")


def validate(cfg: DictConfig) -> None:
    par = cfg.parallel
    require(par.dp * par.tp * par.pp * par.sharding == 1, "parallel", f"dp{par.dp} tp{par.tp} pp{par.pp} sharding{par.sharding}",
            "stage=merge runs in one process (parallel=single)")
    recipe_of(cfg)


def prepare(cfg: DictConfig) -> dict:
    from llmx.merge.stream import inspect

    recipe = recipe_of(cfg)
    return {"recipe": recipe, "inputs": inspect(recipe, "stage.config" if cfg.stage.config else "stage.models")}


def run(cfg: DictConfig, ctx) -> dict:
    import tempfile

    from tqdm import tqdm

    from llmx.console import say
    from llmx.experiment import atomic_dir, atomic_write_json
    from llmx.merge.stream import content_hash, merge

    recipe, inputs = ctx.inputs["recipe"], ctx.inputs["inputs"]
    out = Path(cfg.stage.output_dir) if cfg.stage.output_dir else ctx.experiment.dir / "model"
    started = time.time()
    progress = lambda n, it: tqdm(it, total=n, unit="tensor", desc="merging", file=__import__("sys").stderr,  # noqa: E731
                                  dynamic_ncols=True, mininterval=1.0)
    with tempfile.TemporaryDirectory(prefix="llmx-merge-") as tmp:
        dirs = {i.name: materialize(i, cfg.model, Path(tmp)) for i in inputs}
        with atomic_dir(out) as staging:
            written = merge(recipe, inputs, dirs, staging, progress)
            record = {"method": recipe.method, "recipe": recipe.to_dict(),
                      "inputs": [{"name": i.name, "model_dir": i.source.model_dir, "adapter_dir": i.source.adapter_dir,
                                  "sha256": content_hash(i.source)} for i in inputs], **written}
            atomic_write_json(staging / "merge.json", record)
    atomic_write_json(ctx.experiment.dir / "merge.json", record)
    say("merged %d model(s) with %s into %s", len(inputs), recipe.method, out)
    return {"stage": "merge", "method": recipe.method, "models": len(inputs), "tensors": written["tensors"],
            "merge_seconds": round(time.time() - started, 3), "model_dir": str(out)}


def materialize(inp: Input, model_cfg, tmp: Path) -> Path:
    """A directory with the input's full weights as safetensors: the model directory itself, or the
    model built by llmx.engine.model.build_model (an adapter merged onto its base) saved once. Here, not in
    llmx.merge: the merge package sits below the engine and only reads and writes tensors."""
    if inp.direct:
        return Path(inp.source.model_dir)
    from omegaconf import open_dict

    from llmx.engine.model import build_model, build_tokenizer

    m = model_cfg.copy()
    with open_dict(m):
        m.name_or_path, m.tokenizer = inp.name, None
    model = build_model(m, build_tokenizer(m), 0)
    out = tmp / f"input{abs(hash(inp.name))}"
    model.save_pretrained(str(out), safe_serialization=True)
    del model
    return out
