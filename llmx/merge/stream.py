"""The streaming merge: inputs resolved and checked without paddle (`inspect`), then every output
tensor computed from the inputs' tensors of that name and written before the next is read, so the
peak memory is a few tensors, not whole models.

A model directory with safetensors weights is read in place; an adapter (merged onto its base) or a
model saved in another format is first written once as safetensors by stage=merge's `materialize`
(which builds that one model through the engine, and holds it in memory while it does).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from llmx.convert.tokenizer import NAMED_TEMPLATES
from llmx.errors import ConfigError
from llmx.merge.recipe import DEFAULTS, LAYER, Recipe, defaults, layer_position, resolve_param
from llmx.merge.safetensors_io import Reader, Writer, weight_files
from llmx.sources import ModelSource, resolve

FLOAT_CODES = ("F32", "F16", "BF16")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "sentencepiece.bpe.model")
ARCH_KEYS = ("architectures", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "model_type")


@dataclass
class Input:
    name: str  # as the user wrote it
    source: ModelSource
    config: dict

    @property
    def direct(self) -> bool:
        """Its safetensors can be streamed as they are (no adapter to merge, no other format)."""
        return self.source.adapter is None and bool(weight_files(Path(self.source.model_dir)))


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def content_hash(src: ModelSource) -> str:
    """sha256 over the weight files of the model (and its adapter's files, if any)."""
    files = [p for p in Path(src.model_dir).iterdir() if p.suffix in (".safetensors", ".pdparams")]
    if src.adapter_dir:
        files += [p for p in Path(src.adapter_dir).iterdir() if p.is_file() and p.suffix in (".safetensors", ".pdparams", ".json")]
    return _sha256(files)


def tokenizer_hash(src: ModelSource) -> Optional[str]:
    files = [Path(src.tokenizer, n) for n in TOKENIZER_FILES if Path(src.tokenizer, n).is_file()]
    return _sha256(files) if files else None


def inspect(recipe: Recipe, key: str) -> list[Input]:
    """Resolve and check every input, paddle-free: one-line ConfigErrors for what cannot merge."""
    inputs = []
    for name in recipe.inputs():
        src = resolve(name, key=f"{key} model {name}")
        inputs.append(Input(name, src, json.loads(Path(src.model_dir, "config.json").read_text())))
    first = inputs[0]
    for other in inputs[1:]:
        for k in ARCH_KEYS:
            if first.config.get(k) != other.config.get(k):
                raise ConfigError(f"{key}: {other.source.model_dir}/config.json: {k}={other.config.get(k)!r} differs from "
                                  f"{first.config.get(k)!r} in {first.source.model_dir}/config.json; models of one architecture only")
        if recipe.method != "passthrough" and first.config.get("num_hidden_layers") != other.config.get("num_hidden_layers"):
            raise ConfigError(f"{key}: {other.source.model_dir}/config.json: num_hidden_layers="
                              f"{other.config.get('num_hidden_layers')} differs from {first.config.get('num_hidden_layers')} "
                              f"in {first.source.model_dir}/config.json (passthrough stacks layers of different depths)")
    if recipe.tokenizer_source is None:
        hashes = {i.name: tokenizer_hash(i.source) for i in inputs}
        for i in inputs[1:]:
            if hashes[i.name] != hashes[first.name]:
                raise ConfigError(f"{key}: the tokenizer in {i.source.tokenizer} differs from the one in {first.source.tokenizer}; "
                                  "merge models that share a tokenizer or set tokenizer_source (base or a model path)")
    direct = [i for i in inputs if i.direct]
    for i in direct[1:]:  # shapes of what can be read now; materialized inputs are checked when written
        check_tensors(recipe, direct[0].name, Reader(Path(direct[0].source.model_dir)), i.name, Reader(Path(i.source.model_dir)), key)
    return inputs


def check_tensors(recipe: Recipe, a_name: str, a: Reader, b_name: str, b: Reader, key: str) -> None:
    if recipe.method == "passthrough":
        return
    missing = [n for n in a.names() if n not in b]
    if missing:
        raise ConfigError(f"{key}: tensor {missing[0]} of {a_name} is missing from {b_name}")
    for n in a.names():
        if a.shape(n) != b.shape(n):
            raise ConfigError(f"{key}: tensor {n} has shape {list(a.shape(n))} in {a_name} but {list(b.shape(n))} in {b_name}")


def _layer_count(config: dict) -> int:
    return int(config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers") or 1)


def _resolved(spec: dict, name: str, position: float, fill: dict) -> dict:
    """Each parameter of `spec` for tensor `name`; where `spec` has none that applies, `fill`'s."""
    out = {}
    for k in DEFAULTS:
        value = resolve_param(spec[k], name, position) if k in spec else None
        out[k] = fill[k] if value is None else value
    return out


def merge(recipe: Recipe, inputs: list[Input], dirs: dict[str, Path], out_dir: Path, progress: Callable = lambda n, it: it,
          key: str = "stage") -> dict:
    """Write the merged model into `out_dir` (config, tokenizer, model.safetensors); return what merge.json records."""
    import numpy as np

    from llmx.merge.methods import merge_tensor

    readers = {name: Reader(d) for name, d in dirs.items()}
    by_name = {i.name: i for i in inputs}
    ref_name = recipe.base_model or (recipe.models[0] if recipe.models else recipe.slices[0][0])
    ref = readers[ref_name]
    for name in recipe.models:
        check_tensors(recipe, ref_name, ref, name, readers[name], key)
    config = dict(by_name[ref_name].config)
    layers = _layer_count(config)
    dtype = recipe.dtype or config.get("dtype") or "float32"
    # (output name, reader and tensor name it takes its shape and dtype from, producer of its array)
    plan: list[tuple[str, Reader, str, Callable]] = []

    if recipe.method == "passthrough":
        def take(r: Reader, n: str, out_name: str, spec: dict, position: float):
            glob = _resolved(recipe.params, out_name, position, defaults("passthrough"))
            scale = _resolved(spec, out_name, position, glob)["scale"]
            return r.get(n) if scale is None else r.get(n) * float(scale)

        # as mergekit: the tensors before the layers (embeddings) from the first slice's model, after them
        # (final norm, head) from the last slice's
        slice_params = recipe.slice_params or [{} for _ in recipe.slices]
        first, last = readers[recipe.slices[0][0]], readers[recipe.slices[-1][0]]
        head = [n for n in first.names() if not LAYER.match(n) and "embed" in n]
        tail = [n for n in last.names() if not LAYER.match(n) and "embed" not in n]
        plan += [(n, first, n, (lambda n=n: take(first, n, n, slice_params[0], 0.0))) for n in head]
        out_layer = 0
        for (model, start, end), spec in zip(recipe.slices, slice_params):
            r = readers[model]
            have = _layer_count(by_name[model].config)
            if end > have:
                raise ConfigError(f"{key}: slice of {model}: layer_range [{start}, {end}] beyond its {have} layers")
            for layer in range(start, end):
                position = (layer - start) / (end - start - 1) if end - start > 1 else 1.0
                for n in r.names():
                    mt = LAYER.match(n)
                    if mt and int(mt.group(2)) == layer:
                        out = f"{mt.group(1)}{out_layer}{mt.group(3)}"
                        plan.append((out, r, n, (lambda r=r, n=n, out=out, spec=spec, position=position:
                                                 take(r, n, out, spec, position))))
                out_layer += 1
        plan += [(n, last, n, (lambda n=n: take(last, n, n, slice_params[-1], 0.0))) for n in tail]
        config["num_hidden_layers"] = out_layer
    else:
        base = readers[recipe.base_model] if recipe.base_model else None

        def produce(n: str):
            position = layer_position(n, layers)
            glob = _resolved(recipe.params, n, position, defaults(recipe.method))
            per_model = [_resolved(p, n, position, glob) for p in recipe.model_params] or \
                        [dict(glob) for _ in recipe.models]
            tensors = [readers[m].get(n) for m in recipe.models]
            if not np.issubdtype(tensors[0].dtype, np.floating):
                return tensors[0]
            return merge_tensor(recipe.method, n, tensors, base.get(n) if base else None, per_model, glob)

        plan = [(n, ref, n, (lambda n=n: produce(n))) for n in ref.names()]

    layout = [(n, dtype if r.dtype(src) in FLOAT_CODES else _dtype_name(r.dtype(src)), r.shape(src)) for n, r, src, _ in plan]
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = Writer(out_dir / "model.safetensors", layout)
    try:
        for n, _, _, make in progress(len(plan), plan):
            writer.write(n, make())
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    config["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_src = by_name[ref_name].source
    if recipe.tokenizer_source and recipe.tokenizer_source != "base":
        tok_src = by_name[recipe.tokenizer_source].source if recipe.tokenizer_source in by_name else resolve(recipe.tokenizer_source)
    for f in Path(tok_src.tokenizer).iterdir():
        if f.is_file() and (f.name in TOKENIZER_FILES or f.name in ("tokenizer_config.json", "chat_template.json", "chat_template.jinja", NAMED_TEMPLATES)):
            shutil.copy(f, out_dir / f.name)
    gen = Path(by_name[ref_name].source.model_dir, "generation_config.json")
    if gen.is_file():
        shutil.copy(gen, out_dir / gen.name)
    return {"tensors": len(plan), "num_hidden_layers": config.get("num_hidden_layers"), "dtype": dtype}


def _dtype_name(code: str) -> str:
    from llmx.merge.safetensors_io import CODE

    return {v: k for k, v in CODE.items()}[code]
