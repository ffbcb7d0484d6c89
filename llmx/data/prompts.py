"""Prompts for RL stages (ppo, grpo), paddle-free: JSONL lines in the SFT format `{"src", "tgt"}` (the last
tgt is the reference answer a rule-based reward compares with) or the inference format (`{"src"}` with
one tgt fewer than src, or `{"messages"}`: no reference). A bad line fails with `path:line: reason`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmx.data.infer import Chat, chat_from_messages, chat_from_src
from llmx.data.jsonl import read_jsonl_records
from llmx.errors import DataError


@dataclass(frozen=True)
class PromptLine:
    chat: Chat
    reference: Optional[str]  # the answer a rule-based reward may compare with


def _prompt_line(obj, where: str, lineno: int) -> PromptLine:
    if not isinstance(obj, dict) or not ("src" in obj or "messages" in obj):
        raise DataError(f"{where}: expected a JSON object with src (and tgt) or messages")
    if "messages" in obj:
        return PromptLine(chat_from_messages(obj["messages"], f"{where}: messages"), None)
    src, tgt = obj["src"], obj.get("tgt", [])
    src, tgt = ([src] if isinstance(src, str) else src), ([tgt] if isinstance(tgt, str) else tgt)
    if isinstance(src, list) and isinstance(tgt, list) and tgt and len(tgt) == len(src):
        if not isinstance(tgt[-1], str):
            raise DataError(f"{where}: tgt must be a string or a list of strings")
        return PromptLine(chat_from_src({"src": src, "tgt": tgt[:-1]}, where), tgt[-1])
    return PromptLine(chat_from_src({"src": src, "tgt": tgt}, where), None)


def read_prompt_jsonl(path: str | Path) -> list[PromptLine]:
    return read_jsonl_records(path, _prompt_line, "prompts")
