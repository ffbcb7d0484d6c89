"""Checkpoint conversion runner: Hugging Face <-> llmx/PaddleNLP model directories.

`direction=from_hf` reads `model.name_or_path` (an HF dir: safetensors or pytorch_model.bin,
sharded or not, config.json, generation_config.json, tokenizer files) and writes a directory that
llmx and PaddleNLP's `from_pretrained` load. `direction=to_hf` reads an llmx model directory and
writes one that transformers' `AutoModelForCausalLM.from_pretrained` loads. Tensors stream one at
a time; the source is only read. The family comes from config.json unless `model=<family>` names
one (then a checkpoint of another family is refused).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from llmx.config import fail, one_of, require

DIRECTIONS = ("from_hf", "to_hf")


@dataclass
class Config:
    runner: str = "convert"
    direction: str = "from_hf"  # from_hf: HF dir -> llmx model dir; to_hf: llmx model dir -> HF dir
    output_dir: Optional[str] = None  # None: <run dir>/model (from_hf) or <run dir>/hf (to_hf)
    dtype: Optional[str] = None  # None: keep the stored dtype; float32 | float16 | bfloat16


def validate(cfg: DictConfig) -> None:
    s, m = cfg.stage, cfg.model
    one_of("stage.direction", s.direction, DIRECTIONS)
    require(m.name_or_path is not None, "model.name_or_path", None,
            "needs the directory to convert (an HF checkpoint dir for from_hf, an llmx model dir for to_hf)")
    if s.dtype is not None:
        one_of("stage.dtype", s.dtype, ("float32", "float16", "bfloat16"))
    if s.output_dir is not None:
        out, src = Path(s.output_dir).resolve(), Path(m.name_or_path).resolve()
        require(out != src and src not in out.parents, "stage.output_dir", s.output_dir,
                f"must lie outside model.name_or_path ({m.name_or_path}): the source is never written")


def family_given(cfg: DictConfig) -> Optional[str]:
    """The family the user named with model=<family>, or None where the model group is the default
    (`tiny`): then config.json decides."""
    from hydra.core.hydra_config import HydraConfig

    try:
        choice = HydraConfig.get().runtime.choices.get("model")
    except ValueError:  # composed outside a Hydra app (tests): the config's family is the user's
        return cfg.model.family
    return None if choice in (None, "tiny") else cfg.model.family


def prepare(cfg: DictConfig) -> dict:
    """Read config.json and settle the family, before paddle: a mismatch is one line."""
    from llmx.convert.hf import check_family, read_json
    from llmx.families import family_of_paddle_config

    src = Path(cfg.model.name_or_path)
    given = family_given(cfg)
    config = read_json(src / "config.json")
    if cfg.stage.direction == "from_hf":
        fam = check_family(config, given, src)
    else:
        found = family_of_paddle_config(config)
        if found is None and given is None:
            fail("model.name_or_path", str(src), f"config.json names architectures={config.get('architectures')}, "
                 "which no llmx family has (an llmx model dir; name its family with model=<family>)")
        fam = given or found
        if given and found and given != found and {given, found} != {"llama", "baichuan"}:
            fail("model", given, f"{src}/config.json holds a {found} model")
    return {"family": fam}


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.console import say
    from llmx.convert.hf import hf_to_llmx, llmx_to_hf

    s = cfg.stage
    fam = ctx.inputs["family"]
    default = "model" if s.direction == "from_hf" else "hf"
    out = Path(s.output_dir) if s.output_dir else ctx.experiment.dir / default
    convert = hf_to_llmx if s.direction == "from_hf" else llmx_to_hf
    say("converting %s (%s) %s -> %s", cfg.model.name_or_path, fam, s.direction, out)
    summary = convert(Path(cfg.model.name_or_path), out, fam, s.dtype)
    if summary["seconds"] > 0:
        summary["mb_per_s"] = round(summary["megabytes"] / summary["seconds"], 1)
    return {"stage": "convert", **summary}
