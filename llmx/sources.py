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
from dataclasses import dataclass, field
from functools import cached_property
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


# Checkpoints from elsewhere: named by their own path, converted into llmx's cache when a model is built.
CONVERTED_KINDS = ("hf", "gguf")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # model | run | adapter | hf (a Hugging Face checkpoint directory) | gguf (a llama.cpp file)
    path: str  # what was named
    local_dir: Optional[str] = None  # model/run/adapter: the from_pretrained-able directory (full model or the
    #                                  adapter's base); hf/gguf: None (see model_dir)
    adapter_dir: Optional[str] = None  # a peft adapter over model_dir
    adapter: Optional[str] = None  # its method (lora, prefix, vera, lokr, reft)
    tokenizer_dir: Optional[str] = None  # where the tokenizer files are (None: model_dir)
    run_dir: Optional[str] = None  # the llmx run this came from
    key: str = field(default="model.name_or_path", compare=False)  # the setting that named it, for errors

    @cached_property
    def model_dir(self) -> str:
        """A from_pretrained-able directory: the full model, or the adapter's base. An hf/gguf source is converted
        here, once (llmx.convert.cache), by what builds the model: validation and `plan` never ask for it."""
        if self.kind not in CONVERTED_KINDS:
            return self.local_dir
        from llmx.convert.cache import converted
        from llmx.convert.tensors import CheckpointError

        try:
            return str(converted(Path(self.path)))
        except CheckpointError as e:
            if self.kind == "hf":
                raise
            raise ConfigError(f"{self.key}={self.path}: {e}") from None

    @property
    def tokenizer(self) -> str:
        return self.tokenizer_dir or self.model_dir

    @property
    def mergeable(self) -> bool:
        return self.adapter in MERGEABLE

    @property
    def quantized(self) -> bool:
        """An llmx.quant checkpoint (integer weights + scales), dequantized per layer when loaded. (A GGUF's
        quantized tensors are dequantized by its conversion: its model is float.)"""
        return self.kind not in CONVERTED_KINDS and Path(self.local_dir, "quant_config.json").is_file()

    def llmx_config(self, family_name: Optional[str] = None) -> dict:
        """The model's config.json under PaddleNLP's key names, read without paddle and without converting (an
        hf/gguf source's is what its conversion will hold: llmx.convert.cache.llmx_config, `family_name` standing in
        where an HF config.json names no family)."""
        if self.kind in CONVERTED_KINDS:
            from llmx.convert.cache import llmx_config

            return llmx_config(Path(self.path), family_name)
        return json.loads(Path(self.local_dir, "config.json").read_text())


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
    return ModelSource("run" if run_dir else "adapter", run_dir or str(path), str(Path(base)), adapter_dir=str(path),
                       adapter=method, tokenizer_dir=str(path) if _has_tokenizer(path) else None, run_dir=run_dir)


def _run_source(path: Path, key: str) -> ModelSource:
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{key}: {path} is an llmx run that has not finished (no summary.json); "
                          "finish it (relaunch it) or point at a model directory")
    summary = json.loads(summary_file.read_text())
    if summary.get("model_dir") and Path(summary["model_dir"], "config.json").is_file():
        return ModelSource("run", str(path), summary["model_dir"], run_dir=str(path))
    if summary.get("adapter_dir") and Path(summary["adapter_dir"]).is_dir():
        return _adapter_source(Path(summary["adapter_dir"]), key, str(path), summary.get("base_model"))
    raise ConfigError(f"{key}: the llmx run {path} exported no model or adapter (its summary.json names none)")


def resolve(name_or_path: str, key: str = "model.name_or_path") -> ModelSource:
    """What `name_or_path` is (a model, adapter or llmx run directory, a Hugging Face checkpoint directory or a GGUF
    file), converting nothing; a one-line ConfigError naming `key` when it is none of them."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _gguf_source(path, key, name_or_path)
    if not path.is_dir():
        raise ConfigError(f"{key}={name_or_path}: no such directory or .gguf file")
    if (path / ".hydra").is_dir() or (path / "summary.json").is_file():
        return _run_source(path, key)
    if adapter_method(path):
        return _adapter_source(path, key)
    if (path / "config.json").is_file():
        from llmx.convert.cache import is_hf_checkpoint

        if is_hf_checkpoint(path):  # converted, once, into a cache keyed by its content (llmx.convert.cache)
            return ModelSource("hf", str(path), key=key)
        return ModelSource("model", str(path), str(path), key=key)
    raise ConfigError(f"{key}={name_or_path}: not a model directory (no config.json), adapter directory "
                      f"(no {', '.join(ADAPTER_CONFIGS)}) or llmx run directory (no .hydra/)")


def _gguf_source(path: Path, key: str, name_or_path: str) -> ModelSource:
    """A GGUF file llmx can convert; what it cannot is refused here, in one line, before paddle is imported (a
    file converted before was checked then)."""
    from llmx.convert.cache import cached_conversion, gguf_hf_config, is_gguf
    from llmx.convert.tensors import CheckpointError

    if not is_gguf(path):
        raise ConfigError(f"{key}={name_or_path}: a file, but not a .gguf checkpoint (allowed: a model, adapter or "
                          "llmx run directory, or a llama.cpp .gguf file)")
    try:
        if cached_conversion(path) is None:
            gguf_hf_config(path)
    except CheckpointError as e:
        raise ConfigError(f"{key}={name_or_path}: {e}") from None
    return ModelSource("gguf", str(path), key=key)


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
    from llmx.families import FAMILIES, share_weights

    path = Path(name_or_path).expanduser()
    try:
        if (path / ".hydra").is_dir() or (path / "summary.json").is_file():
            summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
            inner = summary.get("model_dir") or summary.get("base_model") or summary.get("adapter_dir")
            found = family_of(inner) if inner else None
            recorded = _recorded_family(path)
            if recorded in FAMILIES and (found is None or share_weights(found, recorded)):
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
