"""Tokenizer files between Hugging Face and PaddleNLP layouts (paddle-free: file renames and
tokenizer_config.json keys; the tokenizers themselves are unchanged, so ids are too).

- A fast tokenizer (`tokenizer.json`) is read by PaddleNLP's `PretrainedTokenizerFast`, which runs
  the same `tokenizers` engine as transformers' fast tokenizers.
- A SentencePiece model (`tokenizer.model`) is read by the family's PaddleNLP class, which expects
  it under its own file name (LlamaTokenizer: `sentencepiece.bpe.model`).
- The chat template goes into tokenizer_config.json (`chat_template`), which both libraries read;
  transformers >= 4.43 also writes it to `chat_template.jinja`, which PaddleNLP does not read.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

HF_SP_MODEL = "tokenizer.model"
FAST = "tokenizer.json"
CONFIG = "tokenizer_config.json"
NAMED_TEMPLATES = "llmx_chat_templates.json"  # a checkpoint's named chat templates, kept where PaddleNLP cannot read them
# PaddleNLP SentencePiece tokenizer class -> the file name it reads (its `resource_files_names`)
PADDLE_SP_FILES = {"LlamaTokenizer": "sentencepiece.bpe.model", "GemmaTokenizer": "tokenizer.model"}
COPIED = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
          "qwen.tiktoken", "ice_text.model")


def _read_config(d: Path) -> dict:
    f = d / CONFIG
    return json.loads(f.read_text()) if f.is_file() else {}


def chat_template_in(d: Path):
    """The Jinja chat template a tokenizer directory ships, as transformers finds it (`chat_template.jinja`,
    `chat_template.json`, tokenizer_config.json's `chat_template`: a string, or a list of named templates);
    None when there is none."""
    d = Path(d)
    return _chat_template(d, _read_config(d)) if d.is_dir() else None


def _chat_template(d: Path, config: dict):
    if (d / NAMED_TEMPLATES).is_file():
        return json.loads((d / NAMED_TEMPLATES).read_text())
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    if (d / "chat_template.json").is_file():  # transformers' older separate file: {"chat_template": ...}
        data = json.loads((d / "chat_template.json").read_text())
        if isinstance(data, dict) and isinstance(data.get("chat_template"), str):
            return data["chat_template"]
    template = config.get("chat_template")
    named = isinstance(template, list) and all(isinstance(t, dict) and {"name", "template"} <= set(t) for t in template)
    return template if isinstance(template, str) or (named and template) else None


def _copy(src: Path, dst: Path, names) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def tokenizer_from_hf(src: Path, dst: Path, sp_class: Optional[str]) -> Optional[str]:
    """Write the tokenizer of HF dir `src` into `dst` for PaddleNLP; the class it will load as (None:
    `src` has no tokenizer). `sp_class`: the family's PaddleNLP SentencePiece class."""
    src, dst = Path(src), Path(dst)
    config = _read_config(src)
    if (src / FAST).is_file():
        shutil.copy2(src / FAST, dst / FAST)
        cls = "PretrainedTokenizerFast"
    elif (src / HF_SP_MODEL).is_file() and sp_class in PADDLE_SP_FILES:
        shutil.copy2(src / HF_SP_MODEL, dst / PADDLE_SP_FILES[sp_class])
        cls = sp_class
    elif config or (src / "vocab.json").is_file():
        cls = config.get("tokenizer_class")  # another slow tokenizer: its own files, by its own name
    else:
        return None
    _copy(src, dst, COPIED)
    if (src / HF_SP_MODEL).is_file() and not (dst / HF_SP_MODEL).is_file():
        shutil.copy2(src / HF_SP_MODEL, dst / HF_SP_MODEL)  # kept for the way back
    return _write_config(src, dst, {k: v for k, v in config.items() if k not in ("auto_map",)}, cls, to_paddle=True)


def tokenizer_to_hf(src: Path, dst: Path) -> Optional[str]:
    """Write the tokenizer of llmx/PaddleNLP dir `src` into `dst` for transformers; the class named."""
    src, dst = Path(src), Path(dst)
    config = _read_config(src)
    cls = config.get("tokenizer_class")
    if (src / FAST).is_file():
        shutil.copy2(src / FAST, dst / FAST)
        if cls in (None, "PretrainedTokenizerFast"):
            cls = "PreTrainedTokenizerFast"
    sp_file = PADDLE_SP_FILES.get(cls or "")
    if sp_file and (src / sp_file).is_file():
        shutil.copy2(src / sp_file, dst / HF_SP_MODEL)
    elif (src / HF_SP_MODEL).is_file():
        shutil.copy2(src / HF_SP_MODEL, dst / HF_SP_MODEL)
    if not config and not (dst / FAST).is_file() and not (dst / HF_SP_MODEL).is_file():
        return None
    _copy(src, dst, COPIED)
    return _write_config(src, dst, config, cls)


def _write_config(src: Path, dst: Path, config: dict, cls: Optional[str], to_paddle: bool = False) -> Optional[str]:
    """dst's tokenizer_config.json: `config` with the class and src's chat template (which both libraries
    read from there); the class is returned. PaddleNLP refuses named templates (a list) in tokenizer_config.json:
    for it the list goes to NAMED_TEMPLATES (which llmx.data.chat renders from) and the default stays there."""
    template = _chat_template(src, config)
    if to_paddle and isinstance(template, list):
        (dst / NAMED_TEMPLATES).write_text(json.dumps(template, indent=2, ensure_ascii=False) + "\n")
        template = next((t["template"] for t in template if t["name"] == "default"), None)
    if cls:
        config["tokenizer_class"] = cls
    if template is not None:
        config["chat_template"] = template
    (dst / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return cls


def save_tokenizer(tokenizer, directory) -> None:
    """`tokenizer.save_pretrained(directory)`, keeping the named chat templates llmx read with it (PaddleNLP
    saves only the default one it was given in tokenizer_config.json)."""
    tokenizer.save_pretrained(str(directory))
    template = getattr(tokenizer, "llmx_chat_template", None)
    if isinstance(template, list):
        (Path(directory) / NAMED_TEMPLATES).write_text(json.dumps(template, indent=2, ensure_ascii=False) + "\n")
