"""SFT examples -> token ids with labels on the assistant's turns only.

Conversations are rendered by llmx.data.chat (the tokenizer's chat template as transformers renders it,
else llmx's plain template `Q: <user>\nA: <assistant></s>`). Every assistant message is learned (its
content and end-of-turn token); everything else gets label IGNORE_INDEX. PaddleNLP's causal-LM
criterions do not shift labels (its datasets do), so `labels[i]` is the token that follows
`input_ids[i]`.
"""
from __future__ import annotations

from llmx.data.chat import ChatFormat
from llmx.data.dialogue import Dialogue
from llmx.tokens import IGNORE_INDEX


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
