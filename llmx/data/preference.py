"""Preference (DPO) and pointwise (KTO) data: read and check JSONL, paddle-free.

The formats are PaddleNLP's (DESIGN.md, "Data formats"):

    DPO: {"src": str|[str], "tgt": str|[str], "response": [a, b], "sort": [i, j]}   higher sort = chosen
    KTO: {"src": str|[str], "tgt": str|[str], "response": [a],    "sort": [1|0]}    1 = desirable

`src` holds one more turn than `tgt`: the earlier turns are a conversation (src[k] answered
by tgt[k]), and the responses answer the last src. A single-turn line is
`{"src": "q", "tgt": [], ...}` (a string is a one-element list). Every line is checked here,
before anything heavy is imported; the first bad one raises DataError("path:line: reason").

`trl_record` turns an example into the dict PaddleNLP's trl data helpers take, rendering
prompts with llmx's plain template (llmx.data.sft) when the tokenizer has no chat template,
so a preference run sees prompts exactly as the SFT run it starts from did.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmx.data.jsonl import read_jsonl_records
from llmx.data.sft import PROMPT_TEMPLATE, Conversation, SftEncoder
from llmx.errors import DataError


@dataclass(frozen=True)
class PreferenceExample:
    history: tuple[tuple[str, str], ...]  # earlier (src, tgt) turns
    prompt: str  # the last src, answered by the responses
    responses: tuple[str, ...]  # DPO: (chosen, rejected); KTO: (response,)
    label: int  # KTO: 1 desirable / 0 undesirable; DPO: 1

    @property
    def chosen(self) -> str:
        return self.responses[0]

    @property
    def rejected(self) -> str:
        return self.responses[1]


def _strings(obj: dict, key: str, where: str) -> list[str]:
    value = obj[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key} must be a string or a list of strings")
    return value


def _example(obj: Any, where: str, kind: str) -> PreferenceExample:
    n = 2 if kind == "dpo" else 1
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with keys src, tgt, response, sort; got {type(obj).__name__}")
    for key in ("src", "tgt", "response", "sort"):
        if key not in obj:
            raise DataError(f"{where}: missing key {key!r} (each line needs src, tgt, response and sort)")
    src, tgt = _strings(obj, "src", where), _strings(obj, "tgt", where)
    if len(src) != len(tgt) + 1:
        raise DataError(f"{where}: src has {len(src)} turns and tgt {len(tgt)}: src needs exactly one more "
                        "(the turn the responses answer)")
    response, sort = obj["response"], obj["sort"]
    if not isinstance(response, list) or not all(isinstance(r, str) for r in response):
        raise DataError(f"{where}: response must be a list of strings")
    if not isinstance(sort, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sort):
        raise DataError(f"{where}: sort must be a list of numbers")
    if len(response) != len(sort):
        raise DataError(f"{where}: response has {len(response)} entries but sort has {len(sort)} (need one sort per response)")
    if len(response) != n:
        need = "2 (chosen and rejected, in any order)" if kind == "dpo" else "1 (KTO data is pointwise)"
        raise DataError(f"{where}: response has {len(response)} entries, need {need}")
    for i, text in enumerate(response):
        if not text.strip():
            raise DataError(f"{where}: response[{i}] is empty")
    if not src[-1].strip():
        raise DataError(f"{where}: the last src is empty (no prompt)")
    if kind == "dpo":
        if sort[0] == sort[1]:
            raise DataError(f"{where}: sort values are equal ({sort[0]}): the higher one marks the chosen response")
        chosen, rejected = (response[0], response[1]) if sort[0] > sort[1] else (response[1], response[0])
        return PreferenceExample(tuple(zip(src[:-1], tgt)), src[-1], (chosen, rejected), 1)
    if sort[0] not in (0, 1):
        raise DataError(f"{where}: sort is {sort}, need [1] (desirable) or [0] (undesirable)")
    return PreferenceExample(tuple(zip(src[:-1], tgt)), src[-1], (response[0],), int(sort[0]))


def read_preference_jsonl(path: str | Path, kind: str = "dpo") -> list[PreferenceExample]:
    """Parse and check every line of a DPO (`kind="dpo"`) or KTO (`kind="kto"`) file."""
    examples = read_jsonl_records(path, lambda obj, where, _: _example(obj, where, kind))
    if kind == "kto" and len({e.label for e in examples}) == 1 and len(examples) > 1:
        which = "desirable" if examples[0].label else "undesirable"
        raise DataError(f"{path}: every line is {which} (KTO needs both sort [1] and sort [0] lines)")
    return examples


def trl_record(example: PreferenceExample, chat_template: bool, second: str | None = None) -> dict:
    """The dict `paddlenlp.trl.preprocess_preference_data` takes: `response` = [first, second] with
    the first sorted higher. DPO: (chosen, rejected). KTO: (the response, `second`), where `second`
    is the mismatched response whose log-probability estimates the KL term."""
    def render(src: str) -> str:
        return src if chat_template else PROMPT_TEMPLATE.format(src=src)

    srcs = [render(s) for s, _ in example.history] + [render(example.prompt)]
    responses = list(example.responses) if second is None else [example.responses[0], second]
    return {"src": srcs, "tgt": [t for _, t in example.history], "response": responses, "sort": [1, 0]}


def encode_pairs(examples, tokenizer, max_length: int, max_prompt_length: int) -> list[dict]:
    """Preference examples -> {"chosen": ids, "rejected": ids}: the prompt (earlier turns included) as SFT
    renders it, then the response and eos, cut to max_length."""
    encoder = SftEncoder(tokenizer, max_length, max_prompt_length)
    out = []
    for e in examples:
        pair = {}
        for name, response in (("chosen", e.chosen), ("rejected", e.rejected)):
            prompt, answer = encoder.prompt_and_answer(Conversation(e.history + ((e.prompt, response),)))
            pair[name] = prompt + answer
        out.append(pair)
    return out
