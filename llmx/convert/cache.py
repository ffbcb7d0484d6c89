"""Hugging Face directories as `model.name_or_path`: converted once into a cache keyed by content.

`is_hf_checkpoint(dir)` tells an HF checkpoint from a PaddleNLP/llmx one without paddle (its
weights are pytorch .bin files or safetensors marked `format: pt`, and its config.json carries no
`paddlenlp_version`). `converted(dir)` returns the llmx model directory made from it: under
`$LLMX_CACHE` (default `~/.cache/llmx`) in `hf/<digest>/`, where the digest covers the bytes of
config.json, the weights and the tokenizer files. A second use finds the same digest and reuses
the directory; a changed checkpoint gets a new one. File digests are remembered by (path, size,
mtime) in `hf/digests.json`, so a reuse reads no weights. Only the first use imports paddle.

A GGUF file (llmx.convert.gguf) takes the same road: its digest is that of its bytes, and its first use
rebuilds an HF directory from it (in a temporary directory) before converting that.

Validation and `plan` never convert: `llmx_config(path)` is the config.json a conversion holds, read
without paddle (the HF config.json with the family's keys renamed; a GGUF's rebuilt from its metadata,
or its cached conversion's), and `gguf_hf_config` refuses an unconvertible GGUF in one line.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Optional

from llmx.convert.tensors import SAFE_INDEX, BIN_INDEX, _safetensors_header, weight_files

_CONTENT_FILES = ("config.json", "generation_config.json", SAFE_INDEX, BIN_INDEX, "tokenizer.json", "tokenizer.model",
                  "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                  "merges.txt", "chat_template.jinja", "chat_template.json")


def is_gguf(path) -> bool:
    """A llama.cpp checkpoint file (read by llmx.convert.gguf, imported only to convert one)."""
    path = Path(path)
    return path.suffix.lower() == ".gguf" and path.is_file()


def cache_root() -> Path:
    return Path(os.environ.get("LLMX_CACHE") or Path.home() / ".cache" / "llmx") / "hf"


def is_hf_checkpoint(path: Path) -> bool:
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        if "paddlenlp_version" in json.loads(config.read_text()):
            return False
        files = weight_files(path)
    except (ValueError, OSError):
        return False
    if not files:
        return False
    if files[0].suffix == ".bin":
        return True
    try:
        header, _ = _safetensors_header(files[0])
    except (ValueError, OSError):
        return False
    return (header.get("__metadata__") or {}).get("format") == "pt"


def family_given(cfg) -> Optional[str]:
    """The family the user named with model=<family>; None where the model group is left at its default
    (`tiny`) in a stage=convert run, which takes the family from config.json."""
    if cfg.stage.runner != "convert":
        return cfg.model.family
    from hydra.core.hydra_config import HydraConfig

    try:
        choice = HydraConfig.get().runtime.choices.get("model")
    except ValueError:  # composed outside a Hydra app (tests): the config's family is the user's
        return cfg.model.family
    return None if choice in (None, "tiny") else cfg.model.family


def check_hf_family(cfg) -> None:
    """A Hugging Face checkpoint as model.name_or_path must be of the family asked for (one line naming both)."""
    path = Path(cfg.model.name_or_path)
    if is_gguf(path):
        return check_gguf_family(path, family_given(cfg))
    if not is_hf_checkpoint(path):
        return
    from llmx.convert.hf import check_family, read_json

    check_family(read_json(path / "config.json"), family_given(cfg), path)


def check_gguf_family(path: Path, given: Optional[str]) -> None:
    """Every GGUF llmx converts is a Llama (llmx.convert.gguf refuses the others when converting)."""
    from llmx.errors import ConfigError

    if given not in (None, "llama"):
        raise ConfigError(f"model={given}: model.name_or_path={path} is a GGUF file, which llmx reads as a llama "
                          "model only (model=llama, or leave the model group at its default)")


def gguf_hf_config(path) -> dict:
    """The HF config.json GGUF file `path` converts through (llmx.convert.gguf.read_hf_config: CheckpointError for
    what it cannot convert); read once per version of the file in a process, since parsing the metadata reads the
    whole file."""
    path = Path(path).resolve()
    st = path.stat()
    return _gguf_hf_config(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _gguf_hf_config(path: str, size: int, mtime_ns: int) -> dict:
    from llmx.convert.gguf import read_hf_config

    return read_hf_config(path)


def llmx_config(path, family_name: Optional[str] = None) -> dict:
    """The config.json of the llmx model converted from checkpoint `path` (an HF directory, or a GGUF file), without
    converting or importing paddle: a GGUF's cached conversion's when there is one, else the HF config.json (a
    GGUF's rebuilt from its metadata) under PaddleNLP's key names, for the family it names (else `family_name`)."""
    from llmx.convert.hf import check_family, paddle_names, read_json
    from llmx.families import family, family_of_hf_config

    path = Path(path)
    if is_gguf(path):
        done = cached_conversion(path)
        if done is not None:
            return read_json(done / "config.json")
        hf = gguf_hf_config(path)
    else:
        hf = read_json(path / "config.json")
    # (conversion takes the family from config.json; `family_name` only stands in where it names none)
    return paddle_names(family(family_of_hf_config(hf) or check_family(hf, family_name, path)), hf)


def _file_digest(path: Path, memo: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        memo[key] = h.hexdigest()
    return memo[key]


def content_digest(path: Path) -> str:
    """sha256 over the names and bytes of the checkpoint's config, weight and tokenizer files."""
    path = Path(path)
    memo_file = cache_root() / "digests.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    before = len(memo)
    h = hashlib.sha256()
    if path.is_file():  # a GGUF holds everything (its name is left out: a renamed copy is the same model)
        h.update(b"gguf\0" + _file_digest(path, memo).encode())
    for f in sorted({*(path / n for n in _CONTENT_FILES if (path / n).is_file()), *weight_files(path)}
                    if path.is_dir() else ()):
        h.update(f.name.encode() + b"\0" + _file_digest(f, memo).encode() + b"\0")
    if len(memo) != before:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f".digests.{os.getpid()}.json")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_file)
    return h.hexdigest()


def cached_conversion(path: Path) -> Optional[Path]:
    """The llmx model directory already converted from checkpoint `path` (a directory, or a GGUF file), else None."""
    out = cache_root() / content_digest(Path(path))[:24]
    return out if (out / "llmx_converted.json").is_file() else None


def converted(path: Path, family: Optional[str] = None) -> Path:
    """The llmx model directory converted from HF checkpoint `path` (a directory, or a GGUF file), converting it
    on first use."""
    path = Path(path)
    done = cached_conversion(path)
    if done is not None:
        return done
    digest = content_digest(path)  # (remembered by path, size and mtime: not read twice)
    out = cache_root() / digest[:24]
    gguf = is_gguf(path)
    if gguf:  # refused before paddle is imported: a wrong file costs a second, not a paddle start
        gguf_hf_config(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Jobs starting together (a Slurm sweep over one checkpoint) convert it once: the first holds the lock.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "llmx_converted.json").is_file():
            importlib.import_module("paddlenlp")  # its logger exists from here on: route it as llmx does

            from llmx.console import ConsoleFilter, quiet_libraries, say
            from llmx.convert.gguf import gguf_to_llmx
            from llmx.convert.hf import hf_to_llmx

            quiet_libraries(ConsoleFilter.verbose)
            say("converting the %s checkpoint %s (once; cached in %s)", "GGUF" if gguf else "Hugging Face", path, out)
            summary = (gguf_to_llmx if gguf else hf_to_llmx)(path, out, family)
            marker = {"source": str(path.resolve()), "digest": digest, **summary}
            (out / "llmx_converted.json").write_text(json.dumps(marker, indent=2) + "\n")
    return out
