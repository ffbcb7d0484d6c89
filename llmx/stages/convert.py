"""Checkpoint conversion runner: Hugging Face <-> llmx/PaddleNLP model directories.

`direction=from_hf` reads `model.name_or_path` (an HF dir: safetensors or pytorch_model.bin,
sharded or not, config.json, generation_config.json, tokenizer files; or a llama.cpp .gguf file,
rebuilt as such a dir first by llmx.convert.gguf) and writes a directory that
llmx and PaddleNLP's `from_pretrained` load. `direction=to_hf` reads an llmx model directory (or a
run directory: its model, or its adapter merged into its base) and writes one that transformers'
`AutoModelForCausalLM.from_pretrained` loads. `direction=to_gguf` writes that HF directory (in a temporary
folder) as one llama.cpp GGUF file of `stage.gguf_type` (llmx.convert.gguf_export) with an Ollama Modelfile
beside it (llmx.data.ollama); families GGUF cannot hold are refused in prepare, before paddle. Tensors
stream one at a time; the source is only read. The family comes from config.json unless `model=<family>` names one (then a checkpoint of
another family is refused).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from llmx.schema import fail, one_of, require

DIRECTIONS = ("from_hf", "to_hf", "to_gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m")


@dataclass
class Config:
    runner: str = "convert"
    direction: str = "from_hf"  # from_hf: HF dir -> llmx model dir; to_hf: llmx model or run dir -> HF dir;
    #                             to_gguf: any model, run, HF dir or .gguf -> one .gguf + Ollama Modelfile
    output_dir: Optional[str] = None  # None: <run dir>/model (from_hf), <run dir>/hf (to_hf), <run dir>/gguf
    dtype: Optional[str] = None  # None: keep the stored dtype; float32 | float16 | bfloat16
    gguf_type: str = "f16"  # to_gguf: f32 | f16 | bf16 | q8_0 | q4_0 | q4_k_m (llama-quantize's mixtures)


def validate(cfg: DictConfig) -> None:
    s, m = cfg.stage, cfg.model
    one_of("stage.direction", s.direction, DIRECTIONS)
    require(m.name_or_path is not None, "model.name_or_path", None,
            "needs the directory to convert (an HF checkpoint dir for from_hf, an llmx model or run dir for to_hf)")
    if s.dtype is not None:
        one_of("stage.dtype", s.dtype, ("float32", "float16", "bfloat16"))
        require(s.direction != "to_gguf", "stage.dtype", s.dtype, "is for from_hf/to_hf; a GGUF's types come "
                f"from stage.gguf_type ({', '.join(GGUF_TYPES)})")
    one_of("stage.gguf_type", s.gguf_type, GGUF_TYPES)
    if s.output_dir is not None:
        out, src = Path(s.output_dir).resolve(), Path(m.name_or_path).resolve()
        require(out != src and src not in out.parents, "stage.output_dir", s.output_dir,
                f"must lie outside model.name_or_path ({m.name_or_path}): the source is never written")


def prepare(cfg: DictConfig) -> dict:
    """Read config.json and settle the family, before paddle: a mismatch is one line."""
    from llmx.convert.cache import check_gguf_family, family_given, is_gguf, is_hf_checkpoint
    from llmx.convert.hf import check_family, read_json
    from llmx.families import family_of_paddle_config, share_weights
    from llmx.sources import resolve

    src = Path(cfg.model.name_or_path)
    given = family_given(cfg)
    if cfg.stage.direction == "from_hf":
        if is_gguf(src):  # a llama.cpp file: a Llama, checked (architecture, tokenizer) when it is converted
            check_gguf_family(src, given)
            return {"family": "llama"}
        if not is_hf_checkpoint(src):
            fail("model.name_or_path", str(src), "is not a Hugging Face checkpoint (config.json with safetensors "
                 "saved by transformers or pytorch_model*.bin) or a .gguf file; for an llmx model use "
                 "stage.direction=to_hf")
        return {"family": check_family(read_json(src / "config.json"), given, src)}
    source = resolve(str(src))
    if cfg.stage.direction == "to_gguf":
        return {"family": _gguf_family(source, given), "source": source}
    config = read_json(Path(source.model_dir) / "config.json")
    found = family_of_paddle_config(config)
    if found is None and given is None:
        fail("model.name_or_path", str(src), f"config.json names architectures={config.get('architectures')}, "
             "which no llmx family has (name its family with model=<family>)")
    if given and found and given != found and not share_weights(given, found):
        fail("model", given, f"{source.model_dir}/config.json holds a {found} model")
    return {"family": given or found, "source": source}


def _gguf_family(source, given) -> str:
    """The family of a model to export as GGUF, refused in one line (before paddle) where GGUF cannot hold it."""
    from llmx.convert.gguf_export import EXPORTS, refusal, tokenizer_kind
    from llmx.families import family_of_paddle_config

    config = source.llmx_config(given)
    fam = given or family_of_paddle_config(config)
    if fam is None:
        fail("model.name_or_path", source.path, f"config.json names architectures={config.get('architectures')}, "
             f"which no llmx family has; GGUF export takes {', '.join(EXPORTS)}")
    found = family_of_paddle_config(config)
    if given and found and given != found:
        fail("model", given, f"{source.path} holds a {found} model")
    why = refusal(fam, config)
    if why:
        fail("model.name_or_path", source.path, why)
    if source.kind != "gguf":  # (a GGUF's vocabulary is rebuilt as a byte-level tokenizer.json)
        where = Path(source.path if source.kind == "hf" else source.tokenizer)
        if tokenizer_kind(where) is None:
            what = "its tokenizer" if where == Path(source.path) else f"its tokenizer ({where})"
            fail("model.name_or_path", source.path, f"{what} is neither a byte-level BPE tokenizer.json nor a "
                 "SentencePiece model, the two kinds a GGUF file holds")
    return fam


def _link_or_copy(src: Path, dst: Path) -> None:
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "llmx_converted.json":
            try:
                os.link(f, dst / f.name)  # the cache's file itself, where the file system allows
            except OSError:
                shutil.copy2(f, dst / f.name)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.console import say
    from llmx.convert.cache import converted, is_gguf
    from llmx.convert.gguf import gguf_to_llmx
    from llmx.convert.hf import hf_to_llmx, llmx_to_hf
    from llmx.experiment import atomic_dir

    s, m = cfg.stage, cfg.model
    fam = ctx.inputs["family"]
    default = {"from_hf": "model", "to_hf": "hf", "to_gguf": "gguf"}[s.direction]
    out = Path(s.output_dir) if s.output_dir else ctx.experiment.dir / default
    say("converting %s (%s, %s) -> %s", m.name_or_path, fam, s.direction, out)
    if s.direction == "from_hf":
        if s.dtype is None:  # the content-keyed cache holds it already (validation resolved the source)
            cache = converted(Path(m.name_or_path), fam)
            with atomic_dir(out) as tmp:
                _link_or_copy(cache, tmp)
            import json

            summary = {k: v for k, v in json.loads((cache / "llmx_converted.json").read_text()).items()
                       if k not in ("source", "model_dir")}
            summary.update(model_dir=str(out), cache_dir=str(cache))
        elif is_gguf(m.name_or_path):
            summary = gguf_to_llmx(Path(m.name_or_path), out, fam, s.dtype)
        else:
            summary = hf_to_llmx(Path(m.name_or_path), out, fam, s.dtype)
    elif s.direction == "to_hf":
        summary = llmx_to_hf(_model_dir(cfg, ctx, fam), out, fam, s.dtype,
                             tokenizer_dir=Path(ctx.inputs["source"].tokenizer))
    else:
        summary = _to_gguf(cfg, ctx, fam, out)
    if summary.get("seconds"):
        summary["mb_per_s"] = round(summary["megabytes"] / summary["seconds"], 1)
    return {"stage": "convert", **summary}


def _model_dir(cfg: DictConfig, ctx, fam: str) -> Path:
    """The llmx model directory to export: the source's, or an adapter run's adapter merged into its base."""
    source = ctx.inputs["source"]
    return _merged_model(cfg, ctx, fam) if source.adapter else Path(source.model_dir)


def _to_gguf(cfg: DictConfig, ctx, fam: str, out: Path) -> dict:
    """The model as an HF directory (temporary), then one .gguf and its Ollama Modelfile in `out`."""
    import re
    import tempfile

    from llmx.console import say
    from llmx.convert.gguf_export import hf_to_gguf
    from llmx.convert.hf import llmx_to_hf

    source = ctx.inputs["source"]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.run_dir or source.path).stem).strip("-.") or "model"
    model_dir = _model_dir(cfg, ctx, fam)
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=ctx.experiment.dir) as hf_dir:
        llmx_to_hf(model_dir, Path(hf_dir), fam, tokenizer_dir=Path(source.tokenizer))
        gguf_file = out / f"{name}-{cfg.stage.gguf_type}.gguf"
        summary = hf_to_gguf(Path(hf_dir), gguf_file, fam, cfg.stage.gguf_type, name=name)
        modelfile = _write_modelfile(gguf_file, Path(hf_dir), summary["add_bos"])
    summary.update(modelfile=str(modelfile["path"]), ollama_template=modelfile["template"])
    say("wrote %s (%s, %.1f MB) and %s%s", gguf_file, cfg.stage.gguf_type, summary["megabytes"], modelfile["path"],
        "" if modelfile["template"] else f" without TEMPLATE ({modelfile['why']})")
    return summary


def _write_modelfile(gguf_file: Path, hf_dir: Path, add_bos: bool) -> dict:
    """`Modelfile` beside `gguf_file`, from HF dir `hf_dir`'s chat template and special tokens (`add_bos`: the
    file's tokenizer.ggml.add_bos_token)."""
    import json

    from llmx.convert.tokenizer import chat_template_in
    from llmx.data.chat import select_template
    from llmx.data.ollama import modelfile_text
    from llmx.experiment import atomic_write_text

    config_file = hf_dir / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    made = modelfile_text(gguf_file.name, select_template(chat_template_in(hf_dir)), tok_config, add_bos)
    path = gguf_file.parent / "Modelfile"
    atomic_write_text(path, made["text"])
    return {**made, "path": path}


def _merged_model(cfg: DictConfig, ctx, fam: str) -> Path:
    from llmx.engine import model as models
    from llmx.engine.checkpoint import save_pretrained

    with_family = cfg.model.copy()
    with_family.family = fam
    tokenizer = models.build_tokenizer(with_family)
    model = models.build_model(with_family, tokenizer, cfg.seed)  # loads the adapter and merges it
    return save_pretrained(model, tokenizer, ctx.experiment.dir / "merged_model", safe_serialization=True)
