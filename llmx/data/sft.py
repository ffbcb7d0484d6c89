"""SFT examples -> token ids with labels on the assistant's turns only.

Conversations are rendered by llmx.data.chat (the tokenizer's chat template as transformers renders it,
else llmx's plain template `Q: <user>\nA: <assistant></s>`). Every assistant message is learned (its
content and end-of-turn token); everything else gets label IGNORE_INDEX. PaddleNLP's causal-LM
criterions do not shift labels (its datasets do), so `labels[i]` is the token that follows
`input_ids[i]`.
"""
from __future__ import annotations

from pathlib import Path

from llmx.data.chat import PROMPT_TEMPLATE, ChatFormat  # noqa: F401 - PROMPT_TEMPLATE: the plain template's prompt
from llmx.data.dialogue import Dialogue
from llmx.data.jsonl import read_jsonl_records
from llmx.errors import DataError
from llmx.tokens import IGNORE_INDEX


def _src_tgt(obj, where: str) -> Dialogue:
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
    return Dialogue(tuple(m for s, t in zip(src, tgt) for m in ({"role": "user", "content": s},
                                                                 {"role": "assistant", "content": t})))


def read_sft_jsonl(path: str | Path) -> list[Dialogue]:
    """Parse and check every line; the first bad line raises DataError('path:line: reason')."""
    return read_jsonl_records(path, lambda obj, where, _: _src_tgt(obj, where))


class SftEncoder:
    """Turns dialogues into token ids with labels, cut to max_length (the last prompt to src_length)."""

    def __init__(self, tokenizer, max_length: int, src_length: int) -> None:
        self.tokenizer = tokenizer
        self.chat = ChatFormat(tokenizer)
        self.max_length = max_length
        self.src_length = src_length

    def turn_ids(self, dialogue: Dialogue) -> list[tuple[list[int], list[int]]]:
        """(ids not learned, ids learned) per assistant message."""
        return self.chat.turns(dialogue)

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

    def encode(self, dialogue: Dialogue) -> dict:
        input_ids: list[int] = []
        labels: list[int] = []
        for prompt, answer in self._fit(self.turn_ids(dialogue)):
            input_ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + answer
        return {"input_ids": input_ids[:-1], "labels": labels[1:]}

    def prompt_and_answer(self, dialogue: Dialogue) -> tuple[list[int], list[int]]:
        """(every earlier turn with its answer, then the last prompt; the last answer, with eos)."""
        turns = self._fit(self.turn_ids(dialogue))
        ids: list[int] = []
        for prompt, answer in turns[:-1]:
            ids += prompt + answer
        return ids + turns[-1][0], turns[-1][1]

    def prompt_for_generation(self, dialogue: Dialogue) -> list[int]:
        """Every earlier turn with its gold answer, then the last prompt."""
        return self.prompt_and_answer(dialogue)[0]
