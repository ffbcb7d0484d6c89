"""SFT data: JSONL `{"src": str|[str], "tgt": str|[str]}` -> token ids with target-only labels.

Lists are multi-turn conversations (src[i] is answered by tgt[i]). When the
tokenizer has a chat template we render turns with it; otherwise with the plain
template below, which is part of llmx's documented format:

    Q: <src 1>\nA: <tgt 1></s>Q: <src 2>\nA: <tgt 2></s>

Loss is computed only on answer tokens (and their end-of-sequence token);
prompt tokens get label IGNORE_INDEX. PaddleNLP's causal-LM criterions do not
shift labels (its datasets do), so `labels[i]` is the token that follows
`input_ids[i]`. Reading and checking the file imports no
paddle, so a malformed line is reported before any heavy import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmx.data.jsonl import read_jsonl_records
from llmx.errors import DataError
from llmx.tokens import IGNORE_INDEX

PROMPT_TEMPLATE = "Q: {src}\nA:"


@dataclass(frozen=True)
class Conversation:
    turns: tuple[tuple[str, str], ...]  # (src, tgt) pairs

    @property
    def answer(self) -> str:
        return self.turns[-1][1]


def _as_turns(obj: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with keys src and tgt, got {type(obj).__name__}")
    missing = [k for k in ("src", "tgt") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r} (each line needs src and tgt)")
    src, tgt = obj["src"], obj["tgt"]
    if isinstance(src, str) and isinstance(tgt, str):
        src, tgt = [src], [tgt]
    if not (isinstance(src, list) and isinstance(tgt, list)):
        raise DataError(f"{where}: src and tgt must both be strings or both be lists of strings")
    if len(src) != len(tgt) or not src:
        raise DataError(f"{where}: src has {len(src)} turns but tgt has {len(tgt)} (need the same number, at least 1)")
    for key, values in (("src", src), ("tgt", tgt)):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise DataError(f"{where}: {key}[{i}] is {type(v).__name__}, expected a string")
    if not tgt[-1].strip():
        raise DataError(f"{where}: the last tgt is empty (nothing to learn)")
    return tuple(zip(src, tgt))


def read_sft_jsonl(path: str | Path) -> list[Conversation]:
    """Parse and check every line; the first bad line raises DataError('path:line: reason')."""
    return read_jsonl_records(path, lambda obj, where, _: Conversation(_as_turns(obj, where)))


class SftEncoder:
    """Turns conversations into token ids, applying the chat template or the plain one."""

    def __init__(self, tokenizer, max_length: int, src_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.src_length = src_length
        self.eos = tokenizer.eos_token_id
        self.bos = tokenizer.bos_token_id
        self.use_chat_template = getattr(tokenizer, "chat_template", None) is not None

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)["input_ids"]

    def turn_ids(self, conv: Conversation) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids) per turn; answers end with eos."""
        if self.use_chat_template:
            pairs = self.tokenizer.encode_chat_inputs([list(t) for t in conv.turns])["conversations"]
            return [(list(p), list(a)) for p, a in pairs]
        turns = [(self._encode(PROMPT_TEMPLATE.format(src=s)), self._encode(t) + [self.eos]) for s, t in conv.turns]
        if self.bos is not None:
            turns[0] = ([self.bos] + turns[0][0], turns[0][1])
        return turns

    def _fit(self, turns: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
        """Truncate: the last prompt keeps its last src_length tokens; older turns are
        dropped while the whole does not fit; finally the last answer is cut."""
        prompt, answer = turns[-1]
        turns = turns[:-1] + [(prompt[-self.src_length:], answer)]
        while len(turns) > 1 and sum(len(p) + len(a) for p, a in turns) > self.max_length:
            turns = turns[1:]
        prompt, answer = turns[-1]
        history = sum(len(p) + len(a) for p, a in turns[:-1])
        room = self.max_length - history - len(prompt)
        return turns[:-1] + [(prompt, answer[:max(room, 1)])]

    def encode(self, conv: Conversation) -> dict:
        input_ids: list[int] = []
        labels: list[int] = []
        for prompt, answer in self._fit(self.turn_ids(conv)):
            input_ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + answer
        return {"input_ids": input_ids[:-1], "labels": labels[1:]}

    def prompt_and_answer(self, conv: Conversation) -> tuple[list[int], list[int]]:
        """(every earlier turn with its answer, then the last prompt; the last answer, with eos)."""
        turns = self._fit(self.turn_ids(conv))
        ids: list[int] = []
        for prompt, answer in turns[:-1]:
            ids += prompt + answer
        return ids + turns[-1][0], turns[-1][1]

    def prompt_for_generation(self, conv: Conversation) -> list[int]:
        """Every earlier turn with its gold answer, then the last prompt."""
        return self.prompt_and_answer(conv)[0]
