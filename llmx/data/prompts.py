"""Prompts for RL stages (ppo, grpo), paddle-free: JSONL lines in the SFT format `{"src", "tgt"}` (the last
tgt is the reference answer a rule-based reward compares with) or the inference format (`{"src"}` with
one tgt fewer than src, or `{"messages"}`: no reference). A bad line fails with `path:line: reason`."""
from __future__ import annotations

from pathlib import Path

from llmx.data.dialogue import Prompt
from llmx.data.infer import chat_from_messages, chat_from_src
from llmx.data.jsonl import read_jsonl_records
from llmx.errors import DataError


def _prompt_line(obj, where: str, lineno: int) -> Prompt:
    if not isinstance(obj, dict) or not ("src" in obj or "messages" in obj):
        raise DataError(f"{where}: expected a JSON object with src (and tgt) or messages")
    if "messages" in obj:
        return Prompt(chat_from_messages(obj["messages"], f"{where}: messages", obj.get("tools")), None, obj, lineno)
    src, tgt = obj["src"], obj.get("tgt", [])
    src, tgt = ([src] if isinstance(src, str) else src), ([tgt] if isinstance(tgt, str) else tgt)
    if isinstance(src, list) and isinstance(tgt, list) and tgt and len(tgt) == len(src):
        if not isinstance(tgt[-1], str):
            raise DataError(f"{where}: tgt must be a string or a list of strings")
        return Prompt(chat_from_src({**obj, "src": src, "tgt": tgt[:-1]}, where), tgt[-1], obj, lineno)
    return Prompt(chat_from_src({**obj, "src": src, "tgt": tgt}, where), None, obj, lineno)


def read_prompt_jsonl(path: str | Path) -> list[Prompt]:
    return read_jsonl_records(path, _prompt_line, "prompts")
