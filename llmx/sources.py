"""What `model.name_or_path` points at, resolved without paddle.

Users name what they have: a model directory (config.json + weights), an adapter
directory (PaddleNLP's peft format, whose config names its base), or an llmx run
directory (its `summary.json` says what the run exported: a full or merged `model/`,
else `adapter/` over `base_model`), or a checkpoint from elsewhere: a Hugging Face
directory or a llama.cpp GGUF file, each converted once into llmx's cache (llmx.convert.cache).
Every stage resolves through `resolve`, so "align the SFT run I just made" never means naming
files inside a run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmx.errors import ConfigError

# PaddleNLP's peft formats: the config file each adapter directory holds -> llmx's method name.
ADAPTER_CONFIGS = {"lora_config.json": "lora", "prefix_config.json": "prefix", "vera_config.json": "vera",
                   "lokr_config.json": "lokr",
                   # PaddleNLP's ReFT writes a plain config.json without its base: llmx adds this file.
                   "llmx_reft.json": "reft"}
# Written by llmx beside every adapter it saves: the base it was trained on.
ADAPTER_BASE = "llmx_adapter.json"
# Adapters whose weights fold into the base's (a merged model computes the same).
MERGEABLE = ("lora", "vera", "lokr")
# The scalar head of a score model (llmx.engine.score), beside its model or adapter weights.
SCORE_HEAD = "score_head.safetensors"


@dataclass(frozen=True)
class ModelSource:
    model_dir: str  # a from_pretrained-able directory: the full model, or the adapter's base
    adapter_dir: Optional[str] = None  # a peft adapter over model_dir
    adapter: Optional[str] = None  # its method (lora, prefix, vera, lokr, reft)
    tokenizer_dir: Optional[str] = None  # where the tokenizer files are (None: model_dir)
    run_dir: Optional[str] = None  # the llmx run this came from

    @property
    def tokenizer(self) -> str:
        return self.tokenizer_dir or self.model_dir

    @property
    def mergeable(self) -> bool:
        return self.adapter in MERGEABLE

    @property
    def quantized(self) -> bool:
        """An llmx.quant checkpoint (integer weights + scales), dequantized per layer when loaded."""
        return Path(self.model_dir, "quant_config.json").is_file()


def adapter_method(path: Path) -> Optional[str]:
    for name, method in ADAPTER_CONFIGS.items():
        if (path / name).is_file():
            return method
    return None


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file()


def _adapter_source(path: Path, key: str, run_dir: Optional[str] = None, base: Optional[str] = None) -> ModelSource:
    method = adapter_method(path)
    for config in [path / ADAPTER_BASE] + [path / n for n in ADAPTER_CONFIGS]:
        if base is None and config.is_file():
            base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base or not Path(base, "config.json").is_file():
        raise ConfigError(f"{key}: the {method} adapter in {path} names its base model {base!r}, "
                          "which is not a model directory here; set model.name_or_path to the base and load the adapter on it")
    return ModelSource(model_dir=str(Path(base)), adapter_dir=str(path), adapter=method,
                       tokenizer_dir=str(path) if _has_tokenizer(path) else None, run_dir=run_dir)


def _run_source(path: Path, key: str) -> ModelSource:
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{key}: {path} is an llmx run that has not finished (no summary.json); "
                          "finish it (relaunch it) or point at a model directory")
    summary = json.loads(summary_file.read_text())
    if summary.get("model_dir") and Path(summary["model_dir"], "config.json").is_file():
        return ModelSource(model_dir=summary["model_dir"], run_dir=str(path))
    if summary.get("adapter_dir") and Path(summary["adapter_dir"]).is_dir():
        return _adapter_source(Path(summary["adapter_dir"]), key, str(path), summary.get("base_model"))
    raise ConfigError(f"{key}: the llmx run {path} exported no model or adapter (its summary.json names none)")


def resolve(name_or_path: str, key: str = "model.name_or_path") -> ModelSource:
    """The model behind `name_or_path`; a one-line ConfigError naming `key` when there is none."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return ModelSource(model_dir=str(_converted_gguf(path, key, name_or_path)))
    if not path.is_dir():
        raise ConfigError(f"{key}={name_or_path}: no such directory or .gguf file")
    if (path / ".hydra").is_dir() or (path / "summary.json").is_file():
        return _run_source(path, key)
    if adapter_method(path):
        return _adapter_source(path, key)
    if (path / "config.json").is_file():
        return ModelSource(model_dir=str(_converted_if_hf(path)))
    raise ConfigError(f"{key}={name_or_path}: not a model directory (no config.json), adapter directory "
                      f"(no {', '.join(ADAPTER_CONFIGS)}) or llmx run directory (no .hydra/)")


def _converted_if_hf(path: Path) -> Path:
    """A Hugging Face checkpoint directory stands for the llmx model directory converted from it, once,
    into a cache keyed by its content (llmx.convert.cache); any other directory for itself."""
    from llmx.convert.cache import converted, is_hf_checkpoint

    return converted(path) if is_hf_checkpoint(path) else path


def _converted_gguf(path: Path, key: str, name_or_path: str) -> Path:
    from llmx.convert.cache import converted, is_gguf
    from llmx.convert.tensors import CheckpointError

    if not is_gguf(path):
        raise ConfigError(f"{key}={name_or_path}: a file, but not a .gguf checkpoint (allowed: a model, adapter or "
                          "llmx run directory, or a llama.cpp .gguf file)")
    try:
        return converted(path)
    except CheckpointError as e:
        raise ConfigError(f"{key}={name_or_path}: {e}") from None


def score_head_file(name_or_path: str, key: str = "model.name_or_path") -> Path:
    """The score head of a reward model (`name_or_path`: a stage=rm run, or its model/adapter dir); a one-line
    ConfigError naming `key` when it is not one."""
    source = resolve(name_or_path, key)
    for folder in (source.adapter_dir, source.model_dir):
        if folder and Path(folder, SCORE_HEAD).is_file():
            return Path(folder, SCORE_HEAD)
    raise ConfigError(f"{key}={name_or_path}: not a reward model (no {SCORE_HEAD} in its model or adapter "
                      "directory); train one with stage=rm")


def family_of(name_or_path: str) -> Optional[str]:
    """The model family a checkpoint holds, read from its config files alone (no paddle, no conversion): a model
    directory's config.json (PaddleNLP's, or a Hugging Face one's model_type), an adapter's base, an llmx run's
    exported model, with the family its .hydra/config.yaml recorded where both share a PaddleNLP class (Llama and
    Baichuan). None when the path names none; resolve() reports what is wrong with it."""
    from llmx.families import FAMILIES

    path = Path(name_or_path).expanduser()
    try:
        if (path / ".hydra").is_dir() or (path / "summary.json").is_file():
            summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
            inner = summary.get("model_dir") or summary.get("base_model") or summary.get("adapter_dir")
            found = family_of(inner) if inner else None
            recorded = _recorded_family(path)
            if recorded in FAMILIES and (found is None or FAMILIES[found].architecture == FAMILIES[recorded].architecture):
                return recorded
            return found
        if adapter_method(path):
            configs = [path / ADAPTER_BASE] + [path / n for n in ADAPTER_CONFIGS]
            bases = [json.loads(c.read_text()).get("base_model_name_or_path") for c in configs if c.is_file()]
            return next((family_of(b) for b in bases if b), None)
        if (path / "config.json").is_file():
            return _config_family(path)
        from llmx.convert.cache import cached_conversion, is_gguf

        if is_gguf(path):
            # Reading a GGUF's metadata parses the whole file (2.4 s for SmolLM2's): once converted, its
            # converted model's config.json answers, as it does for every later composition and rank.
            done = cached_conversion(path)
            if done is not None:
                return _config_family(done)
            from llmx.convert.gguf import SUPPORTED_ARCHITECTURES, architecture, read_metadata
            from llmx.families import family_of_hf_config

            # llama.cpp names architectures as HF's model_type does; one llmx cannot convert: resolve() says so
            arch = architecture(read_metadata(path))
            return family_of_hf_config({"model_type": arch}) if arch in SUPPORTED_ARCHITECTURES else None
    except (OSError, ValueError):  # unreadable or malformed files: resolve() says so in one line
        return None
    return None


def _recorded_family(run: Path) -> Optional[str]:
    from omegaconf import OmegaConf

    config = run / ".hydra" / "config.yaml"
    try:
        return OmegaConf.select(OmegaConf.load(config), "model.family") if config.is_file() else None
    except Exception:  # noqa: BLE001 - a damaged record: the exported model's config.json decides
        return None


def _config_family(path: Path) -> Optional[str]:
    from llmx.convert.cache import is_hf_checkpoint
    from llmx.families import family_of_hf_config, family_of_paddle_config

    config = json.loads((path / "config.json").read_text())
    return family_of_hf_config(config) if is_hf_checkpoint(path) else family_of_paddle_config(config)
