"""The one shape every data format is read into (paddle-free): a conversation as OpenAI-style messages,
exactly what a Hugging Face chat template receives.

A message is a dict with `role` (system, user, assistant, tool) and `content` (a string; an assistant
message that only calls tools may have content None), and where present `tool_calls` (assistant),
`name` and `tool_call_id` (tool). `tools` are the JSON schemas a template may list. What each stage
reads:
- SFT, quantize calibration: a Dialogue ending with an assistant message (every assistant message is
  learned);
- infer, RL prompts: a Prompt, whose dialogue ends with a user (or tool) message;
- preference (DPO, RM) and pointwise (KTO) data: a PreferenceExample, a prompt dialogue plus responses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from llmx.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Dialogue:
    messages: tuple  # message dicts, in order
    tools: Optional[tuple] = None  # tool schemas (dicts), None when the data names none

    def as_list(self) -> list[dict]:
        return [dict(m) for m in self.messages]

    def then(self, *messages: dict) -> "Dialogue":
        return Dialogue(self.messages + tuple(messages), self.tools)

    @property
    def system(self) -> Optional[str]:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    @property
    def last(self) -> dict:
        return self.messages[-1]

    def last_user(self) -> str:
        return next((m["content"] or "" for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass(frozen=True)
class Prompt:
    """What a model answers: infer lines, RL prompts."""
    dialogue: Dialogue  # ends with a user or tool message
    reference: Optional[str] = None  # the answer a rule-based reward may compare with
    record: dict = field(default_factory=dict, compare=False)  # the line as read (infer writes it back)
    lineno: int = 0


@dataclass(frozen=True)
class PreferenceExample:
    prompt: Dialogue  # ends with a user (or tool) message
    responses: tuple  # assistant message dicts. DPO/RM: (chosen, rejected); KTO: (response,)
    label: int = 1  # KTO: 1 desirable / 0 undesirable; DPO: 1

    @property
    def chosen(self) -> dict:
        return self.responses[0]

    @property
    def rejected(self) -> dict:
        return self.responses[1]


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def check_messages(messages: Any, where: str, ends: Sequence[str]) -> tuple:
    """`messages` checked as a conversation ending with a role in `ends`; the messages as a tuple of dicts.
    DataError(`where: reason`) names the first message that is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataError(f"{where}[{i}]: must be an object with a role and a content")
        role = m["role"]
        if role not in ROLES:
            raise DataError(f"{where}[{i}].role={role!r}: allowed: {', '.join(ROLES)}")
        content = m.get("content")
        if not (isinstance(content, str) or (content is None and role == "assistant" and m.get("tool_calls"))):
            got = "missing" if "content" not in m else type(content).__name__
            raise DataError(f"{where}[{i}].content: is {got}, expected a string")
        if role == "system" and i != 0:
            raise DataError(f"{where}[{i}]: a system message can only come first")
        if role == "tool" and (not out or out[-1]["role"] not in ("assistant", "tool")):
            raise DataError(f"{where}[{i}]: a tool message must follow an assistant message (its tool call)")
        out.append(dict(m))
    if all(m["role"] == "system" for m in out):
        raise DataError(f"{where}: has no user message")
    if out[-1]["role"] not in ends:
        raise DataError(f"{where}: the last message must be from the {' or '.join(ends)} (it is {out[-1]['role']})")
    return tuple(out)
