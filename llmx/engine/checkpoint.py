"""Saving models without a Trainer: one from_pretrained-able directory, whatever the layout.

In one process (or under dp/sharding, where every rank holds the whole model) rank 0
writes the model with PaddleNLP's `save_pretrained`. Under tensor/pipeline parallelism
every rank holds a part: the tensor-parallel shards are merged by PaddleNLP's
`merge_tensor_parallel` (the model class's own merge actions), each pipeline stage's
merged part is written to a temporary file by that stage's first rank, and rank 0
joins the stages into one safetensors file under the single-model names (a pipeline
model's state_dict already uses them). All ranks must call `export_model`.
Directories appear atomically (written under a temporary name, then renamed).
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import paddle

from llmx.convert.tokenizer import save_tokenizer
from llmx.engine.distributed import barrier, hybrid_group
from llmx.experiment import atomic_dir
from llmx.layout import Layout
from llmx.sources import ADAPTER_BASE, resolve

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"


def name_single_model_class(model_dir: Path) -> None:
    """A pipeline run records its pipeline class (e.g. LlamaForCausalLMPipe) in config.json;
    name the class that loads the single-model weights."""
    config = Path(model_dir) / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        names = data.get("architectures") or []
        if any(n.endswith("Pipe") for n in names):
            data["architectures"] = [n[: -len("Pipe")] if n.endswith("Pipe") else n for n in names]
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_pretrained(model, tokenizer, out_dir: Path, **kwargs) -> Path:
    """Weights + config + tokenizer files (via a temporary directory), loadable by from_pretrained.
    Adapters are written in PaddleNLP's peft format, which its LoRAModel/PrefixModel loaders read."""
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(str(tmp), **kwargs)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        _name_the_base(model, tmp)
    return Path(out_dir)


def _name_the_base(model, adapter_dir: Path) -> None:
    """An adapter's base, for llmx.sources (PaddleNLP's prefix config has no field for it)."""
    base = getattr(model, "llmx_base_model", None)
    if base is not None:
        (adapter_dir / ADAPTER_BASE).write_text(json.dumps({"base_model_name_or_path": str(base)}, indent=2) + "\n")


def _numpy(state: dict) -> dict:
    return {k: (v.numpy() if isinstance(v, paddle.Tensor) else np.asarray(v)) for k, v in state.items()}


def _single_model_config(config, part):
    """The one-process model's config of a part (a tensor-parallel shard or pipeline stage) `part`."""
    single = copy.deepcopy(config)
    single.tensor_parallel_degree, single.tensor_parallel_rank = 1, 0
    single.tensor_parallel_output = False
    single.sequence_parallel = False
    single.pipeline_parallel_degree = 1
    single.virtual_pp_degree = 1
    name = type(part).__name__
    single.architectures = [name[: -len("Pipe")] if name.endswith("Pipe") else name]
    return single


def _full_names(state: dict, part) -> dict:
    """Single-model names for a part's state (see engine.model._load_part's `llmx_name_prefix`)."""
    prefix = getattr(part, "llmx_name_prefix", "")
    return {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}


def _join_stages(state: Optional[dict], out_dir: Path, is_main: bool) -> Optional[dict]:
    """Every pipeline stage's (tensor-parallel merged) part, joined on rank 0 (None elsewhere). Each
    stage's first rank writes its part to a temporary file next to `out_dir`; rank 0 reads them all."""
    hcg = hybrid_group()
    parts = out_dir.with_name(f".{out_dir.name}.parts")
    stage_writer = hcg.get_model_parallel_rank() == 0 and hcg.get_data_parallel_rank() == 0 \
        and hcg.get_sharding_parallel_rank() == 0
    if is_main:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
    barrier()
    if stage_writer:
        from safetensors.numpy import save_file

        save_file(_numpy(state), str(parts / f"stage-{hcg.get_stage_id()}.safetensors"))
    barrier()
    merged = None
    if is_main:
        from safetensors.numpy import load_file

        merged = {}
        for part in sorted(parts.glob("stage-*.safetensors")):
            merged.update(load_file(str(part)))  # a tied embedding appears in the first and last stage, equal
        shutil.rmtree(parts, ignore_errors=True)
    return merged


def export_model(model, tokenizer, out_dir: Path, layout: Layout, is_main: bool) -> Path:
    """The whole model as one from_pretrained-able directory (see the module docstring)."""
    out_dir = Path(out_dir)
    if not layout.model_parallel:
        if is_main:
            save_pretrained(model, tokenizer, out_dir, safe_serialization=True)
        barrier()
        return out_dir
    state = _full_names(model.state_dict(), model)  # a pipeline stage's part, under single-model names
    # A tied lm_head is the embedding's parameter under a second name, which the merge actions do not
    # name: merge the parameter once and give the alias its merged value.
    first_name, aliases = {}, {}
    for name, tensor in state.items():
        aliases[name] = first_name.setdefault(id(tensor), name)
    state = {name: t for name, t in state.items() if aliases[name] == name}
    if layout.tp > 1:
        state = type(model).merge_tensor_parallel(state, model.config)  # full tensors on tp rank 0
    if state and all(v is not None for v in state.values()):
        state.update({alias: state[name] for alias, name in aliases.items() if alias != name})
    merged = _join_stages(state, out_dir, is_main)
    if is_main:
        from safetensors.numpy import save_file

        with atomic_dir(out_dir) as tmp:
            save_file(merged, str(tmp / WEIGHTS), metadata={"format": "np"})
            _single_model_config(model.config, model).save_pretrained(str(tmp))
            if tokenizer is not None:
                save_tokenizer(tokenizer, tmp)
        log.info("exported %d tensors from %d pipeline stage(s) x %d tensor-parallel shards to %s",
                 len(merged), layout.pp, layout.tp, out_dir)
    barrier()
    return out_dir


def _merge_adapter_shards(model, state: dict) -> dict:
    """A LoRA model's tensor-parallel shards, merged on the tp group's first rank (None elsewhere).
    PaddleNLP merges every split LoRA matrix by plain concatenation; but the B of a fused projection
    (QWen's c_attn: q, k and v, split per head group) has its base weight's column layout, so it is
    merged with the base weight's own merge action. (Found in paddlenlp 3.0.0b4; can go when its LoRA
    merge uses the base model's actions.)"""
    import paddle.distributed as dist

    group = hybrid_group().get_model_parallel_group()
    lora_actions = model._get_tensor_parallel_mappings(model.model.config, is_split=False)
    base_cls = type(model.model)
    base_actions = base_cls._get_tensor_parallel_mappings(model.model.config, is_split=False)
    base_names = {name: name.rsplit(".", 1)[0] + ".weight" for name in lora_actions}
    resolved = base_cls._resolve_prefix_keys(base_actions.keys(), set(base_names.values()))
    by_weight = {resolved[k]: action for k, action in base_actions.items() if k in resolved}
    first = dist.get_rank(group) == 0
    out = {}
    for name, tensor in state.items():
        action = lora_actions.get(name)
        if action is None:  # replicated over the tp group
            out[name] = tensor.numpy() if first else None
            continue
        if action.keywords["is_column"] and base_names[name] in by_weight:
            action = by_weight[base_names[name]]
        shards: list = []
        dist.all_gather(shards, tensor.contiguous(), group=group)
        out[name] = action([t.numpy() for t in shards]) if first else None
    return out


def export_adapter(model, tokenizer, out_dir: Path, layout: Layout, is_main: bool) -> Path:
    """A PEFT model's adapter as one directory that PaddleNLP's peft loaders read into a one-process
    model, whatever the layout: tensor-parallel shards merged (PaddleNLP's own merge of the trainable
    state), pipeline stages joined; a PiSSA adapter rewritten as plain LoRA over the original base.
    All ranks must call."""
    from llmx.engine.peft import pissa_as_lora, uses_pissa

    out_dir = Path(out_dir)
    pissa = uses_pissa(model)
    if not layout.model_parallel and not pissa:
        if is_main:
            save_pretrained(model, tokenizer, out_dir)
        barrier()
        return out_dir
    from paddlenlp.peft import LoRAConfig
    from paddlenlp.peft.lora.lora_model import LORA_WEIGHTS_NAME

    state = model.get_trainable_state_dict()  # single-model names, this rank's shards
    if layout.tp > 1:
        state = _merge_adapter_shards(model, state)  # whole tensors on tp rank 0
    config = LoRAConfig(**model.lora_config.to_dict())
    if pissa:
        state, config = pissa_as_lora(model, state, config)
    merged = _join_stages(_full_names(state, model.model), out_dir, is_main) if layout.model_parallel else _numpy(state)
    if is_main:
        config.tensor_parallel_degree = -1
        with atomic_dir(out_dir) as tmp:
            paddle.save({k: paddle.to_tensor(v) for k, v in merged.items()}, str(tmp / LORA_WEIGHTS_NAME))
            config.save_pretrained(str(tmp))
            _single_model_config(model.model.config, model.model).save_pretrained(str(tmp))
            if tokenizer is not None:
                save_tokenizer(tokenizer, tmp)
            _name_the_base(model, tmp)
    barrier()
    return out_dir


def adapter_base(name_or_path: Optional[str], model, tokenizer, ctx) -> str:
    """The directory an adapter trained on `model` names as its base: `name_or_path`'s model directory when
    it is a plain model; else (a random init, or a base with an earlier run's adapter merged into it) `model`
    itself, exported once to <run dir>/base_model, since an adapter must point at weights that exist."""
    source = resolve(name_or_path) if name_or_path else None
    if source and not source.adapter:
        return source.model_dir
    base = ctx.experiment.dir / "base_model"
    missing = not (base / "config.json").exists()
    barrier()  # every rank has looked before any writes
    if missing:
        export_model(model, tokenizer, base, ctx.layout, ctx.runtime.is_main)
    return str(base)


def export_result(model, tokenizer, ctx, base_ref: Optional[str]) -> dict:
    """The trained weights into the run dir, as summary entries: `model/` for full training, or `adapter/`
    with the base it names (`base_ref`)."""
    out = ctx.experiment.dir
    if base_ref is None:
        return {"model_dir": str(export_model(model, tokenizer, out / "model", ctx.layout, ctx.runtime.is_main))}
    return {"adapter_dir": str(export_adapter(model, tokenizer, out / "adapter", ctx.layout, ctx.runtime.is_main)),
            "base_model": base_ref}
