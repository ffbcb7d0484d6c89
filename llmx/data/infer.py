"""Inference input: JSONL lines `{"src": str}`, `{"src": [str, ...], "tgt": [str, ...]}` (a conversation:
every src but the last answered by its tgt), or chat `{"messages": [{"role", "content"}, ...]}` with
roles system (first, optional), then user and assistant in turns, ending with user. Other keys of a
line are kept and come back in the output. Paddle-free: a bad line fails with `path:line: reason`
before anything heavy is imported.

Prompts are rendered as SFT renders its training examples (llmx.data.sft: the tokenizer's chat
template, else the plain `Q: ...\\nA:` template), so a fine-tuned model sees what it was trained on;
a system message goes before the first user message."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmx.data.jsonl import read_jsonl_records
from llmx.data.sft import Conversation, SftEncoder
from llmx.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Chat:
    turns: tuple  # ((user, assistant), ...) answered turns
    question: str  # the last user message
    system: Optional[str] = None


def chat_from_messages(messages: Any, where: str = "messages") -> Chat:
    """A chat from OpenAI-style messages; DataError (`where: reason`) when they cannot be one."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: must be a non-empty list of {{\"role\", \"content\"}} objects")
    system = None
    users, answers = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(f"{where}[{i}]: must be an object with a role and a content")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{where}[{i}].role={role!r}: allowed: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}[{i}].content: is {type(content).__name__}, expected a string")
        if role == "system":
            if i != 0:
                raise DataError(f"{where}[{i}]: a system message can only come first")
            system = content
            continue
        expected = "user" if len(users) == len(answers) else "assistant"
        if role != expected:
            raise DataError(f"{where}[{i}].role={role!r}: expected {expected} (user and assistant take turns)")
        (users if role == "user" else answers).append(content)
    if len(users) == len(answers):
        raise DataError(f"{where}: the last message must be from the user")
    return Chat(tuple(zip(users[:-1], answers)), users[-1], system)


def chat_from_src(obj: dict, where: str) -> Chat:
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
    return Chat(tuple(zip(src[:-1], tgt)), src[-1])


@dataclass(frozen=True)
class InferenceLine:
    chat: Chat
    record: dict  # the input line as read (written back with the output)
    lineno: int


def read_inference_jsonl(path: str | Path) -> list[InferenceLine]:
    return read_jsonl_records(path, _inference_line, "prompts")


def _inference_line(obj, where: str, lineno: int) -> InferenceLine:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with src or messages, got {type(obj).__name__}")
    if "messages" in obj:
        chat = chat_from_messages(obj["messages"], f"{where}: messages")
    elif "src" in obj:
        chat = chat_from_src(obj, where)
    else:
        raise DataError(f"{where}: needs a key src (text) or messages (chat)")
    return InferenceLine(chat, obj, lineno)


def prompt_ids(tokenizer, chat: Chat) -> list[int]:
    """The token ids a model generates the answer to `chat` from (as SFT trained it)."""
    first = list(chat.turns[0]) if chat.turns else [chat.question, ""]
    if chat.system:
        first[0] = f"{chat.system}\n\n{first[0]}"
    turns = ([tuple(first)] + list(chat.turns[1:]) + [(chat.question, "")] if chat.turns
             else [(first[0], "")])
    encoder = SftEncoder(tokenizer, max_length=1 << 30, src_length=(1 << 30) - 1)
    return encoder.prompt_for_generation(Conversation(tuple(turns)))
