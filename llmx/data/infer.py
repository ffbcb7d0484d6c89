"""Inference input: JSONL lines `{"src": str}`, `{"src": [str, ...], "tgt": [str, ...]}` (a conversation:
every src but the last answered by its tgt), or chat `{"messages": [{"role", "content"}, ...]}` with
roles system (first, optional), then user and assistant in turns, ending with user. Other keys of a
line are kept and come back in the output. Paddle-free: a bad line fails with `path:line: reason`
before anything heavy is imported.

Prompts are rendered as SFT renders its training examples (llmx.data.chat: the tokenizer's chat
template, else the plain `Q: ...\\nA:` template), so a fine-tuned model sees what it was trained on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from llmx.data.chat import ChatFormat
from llmx.data.dialogue import Dialogue, Prompt, check_messages
from llmx.data.jsonl import read_jsonl_records
from llmx.errors import DataError


def chat_from_messages(messages: Any, where: str = "messages", tools=None) -> Dialogue:
    """A dialogue to answer from OpenAI-style messages; DataError (`where: reason`) when they cannot be one."""
    return Dialogue(check_messages(messages, where, ends=("user", "tool")), tuple(tools) if tools else None)


def chat_from_src(obj: dict, where: str) -> Dialogue:
    src, tgt = obj["src"], obj.get("tgt", [])
    if isinstance(src, str):
        src = [src]
    if isinstance(tgt, str):
        tgt = [tgt]
    if not isinstance(src, list) or not src or not all(isinstance(s, str) for s in src):
        raise DataError(f"{where}: src must be a string or a non-empty list of strings")
    if not isinstance(tgt, list) or not all(isinstance(t, str) for t in tgt):
        raise DataError(f"{where}: tgt must be a string or a list of strings")
    if len(tgt) != len(src) - 1:
        raise DataError(f"{where}: src has {len(src)} turns, so tgt needs the {len(src) - 1} earlier answers "
                        f"(got {len(tgt)})")
    turns = [m for s, t in zip(src, tgt) for m in ({"role": "user", "content": s}, {"role": "assistant", "content": t})]
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: system must be a string")
    head = ({"role": "system", "content": system},) if system else ()
    return Dialogue(head + tuple(turns) + ({"role": "user", "content": src[-1]},))


def read_inference_jsonl(path: str | Path) -> list[Prompt]:
    return read_jsonl_records(path, _inference_line, "prompts")


def _inference_line(obj, where: str, lineno: int) -> Prompt:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with src or messages, got {type(obj).__name__}")
    if "messages" in obj:
        chat = chat_from_messages(obj["messages"], f"{where}: messages", obj.get("tools"))
    elif "src" in obj:
        chat = chat_from_src(obj, where)
    else:
        raise DataError(f"{where}: needs a key src (text) or messages (chat)")
    return Prompt(chat, None, obj, lineno)


def prompt_ids(tokenizer, dialogue: Dialogue) -> list[int]:
    """The token ids a model generates the answer to `dialogue` from (rendered as SFT trained it)."""
    return ChatFormat(tokenizer).prompt_ids(dialogue)
