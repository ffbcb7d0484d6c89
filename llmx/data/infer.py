"""Prompts to answer as token ids (infer, serve, RL), rendered as SFT renders its training examples
(llmx.data.chat: the tokenizer's chat template, else llmx's plain template), so a fine-tuned model sees
what it was trained on. Files of prompts are read by llmx.data.formats.read_prompts; a request's
OpenAI-style messages are checked here."""
from __future__ import annotations

from typing import Any

from llmx.data.chat import ChatFormat
from llmx.data.dialogue import Dialogue, check_messages


def chat_from_messages(messages: Any, where: str = "messages", tools=None) -> Dialogue:
    """A dialogue to answer from OpenAI-style messages; DataError (`where: reason`) when they cannot be one."""
    return Dialogue(check_messages(messages, where, ends=("user", "tool")), tuple(tools) if tools else None)


def prompt_ids(tokenizer, dialogue: Dialogue) -> list[int]:
    """The token ids a model generates the answer to `dialogue` from (rendered as SFT trained it)."""
    return ChatFormat(tokenizer).prompt_ids(dialogue)
