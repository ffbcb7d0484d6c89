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

import numpy as np
import paddle

from llmx.engine.distributed import barrier, hybrid_group
from llmx.experiment import atomic_dir
from llmx.layout import Layout

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
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def _numpy(state: dict) -> dict:
    return {k: (v.numpy() if isinstance(v, paddle.Tensor) else np.asarray(v)) for k, v in state.items()}


def _single_model_config(config):
    single = copy.deepcopy(config)
    single.tensor_parallel_degree, single.tensor_parallel_rank = 1, 0
    single.tensor_parallel_output = False
    single.sequence_parallel = False
    single.pipeline_parallel_degree = 1
    single.virtual_pp_degree = 1
    single.architectures = [a[: -len("Pipe")] if a.endswith("Pipe") else a for a in (single.architectures or [])]
    return single


def export_model(model, tokenizer, out_dir: Path, layout: Layout, is_main: bool) -> Path:
    """The whole model as one from_pretrained-able directory (see the module docstring)."""
    out_dir = Path(out_dir)
    if not layout.model_parallel:
        if is_main:
            save_pretrained(model, tokenizer, out_dir, safe_serialization=True)
        barrier()
        return out_dir
    hcg = hybrid_group()
    state = model.state_dict()  # a pipeline stage's part, under single-model names
    full_names = getattr(model, "llmx_full_names", {})  # names a pipeline class shortened (engine.model)
    state = {full_names.get(k, k): v for k, v in state.items()}
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
    if is_main:
        from safetensors.numpy import load_file, save_file

        merged: dict = {}
        for part in sorted(parts.glob("stage-*.safetensors")):
            merged.update(load_file(str(part)))  # a tied embedding appears in the first and last stage, equal
        with atomic_dir(out_dir) as tmp:
            save_file(merged, str(tmp / WEIGHTS), metadata={"format": "np"})
            _single_model_config(model.config).save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(parts, ignore_errors=True)
        log.info("exported %d tensors from %d pipeline stage(s) x %d tensor-parallel shards to %s",
                 len(merged), layout.pp, layout.tp, out_dir)
    barrier()
    return out_dir


