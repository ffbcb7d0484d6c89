"""Preference (DPO, RM) and pointwise (KTO) data: read and check files (paddle-free), and encode examples
as PaddleNLP's trl lays them out.

PaddleNLP's JSONL formats (DESIGN.md, "Data formats"):

    DPO: {"src": str|[str], "tgt": str|[str], "response": [a, b], "sort": [i, j]}   higher sort = chosen
    KTO: {"src": str|[str], "tgt": str|[str], "response": [a],    "sort": [1|0]}    1 = desirable

`src` holds one more turn than `tgt`: the earlier turns are a conversation (src[k] answered
by tgt[k]), and the responses answer the last src. Every line is checked before anything heavy is
imported; the first bad one raises DataError("path:line: reason").

`encode_trl` writes what `paddlenlp.trl.preprocess_preference_data` writes (one sequence prompt +
first response + second response, the second unable to see the first; next-token labels with 0 as
"not learned"), but from llmx.data.chat's rendering: trl renders chat templates with PaddleNLP's
`encode_chat_inputs`, which fails on templates that are not turn-local, and renders a tokenizer
without a template otherwise than SFT does. So a preference run sees prompts exactly as the SFT run
it starts from did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmx.data.chat import ChatFormat, TemplateError
from llmx.data.dialogue import Dialogue, PreferenceExample, assistant, user
from llmx.data.jsonl import read_jsonl_records
from llmx.data.sft import SftEncoder
from llmx.errors import DataError


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
        return PreferenceExample(_prompt(src, tgt), (assistant(chosen), assistant(rejected)), 1)
    if sort[0] not in (0, 1):
        raise DataError(f"{where}: sort is {sort}, need [1] (desirable) or [0] (undesirable)")
    return PreferenceExample(_prompt(src, tgt), (assistant(response[0]),), int(sort[0]))


def _prompt(src: list, tgt: list) -> Dialogue:
    return Dialogue(tuple(m for s, t in zip(src, tgt) for m in (user(s), assistant(t))) + (user(src[-1]),))


def read_preference_jsonl(path: str | Path, kind: str = "dpo") -> list[PreferenceExample]:
    """Parse and check every line of a DPO (`kind="dpo"`) or KTO (`kind="kto"`) file."""
    examples = read_jsonl_records(path, lambda obj, where, _: _example(obj, where, kind))
    if kind == "kto" and len({e.label for e in examples}) == 1 and len(examples) > 1:
        which = "desirable" if examples[0].label else "undesirable"
        raise DataError(f"{path}: every line is {which} (KTO needs both sort [1] and sort [0] lines)")
    return examples


def _prompt_and_answers(chat: ChatFormat, prompt: Dialogue, responses: Sequence[dict]) -> tuple[list, list]:
    """The prompt's ids (its earlier turns included) and each response's ids with its end of turn."""
    prompt_ids, answers = None, []
    for response in responses:
        turns = chat.turns(prompt.then(response))
        ids = [i for p, a in turns[:-1] for i in p + a] + turns[-1][0]
        if prompt_ids is not None and ids != prompt_ids:
            raise TemplateError("chat template: two responses to one prompt render different prompt tokens")
        prompt_ids = ids
        answers.append(turns[-1][1])
    return prompt_ids, answers


def encode_trl(examples: Sequence[PreferenceExample], tokenizer, max_length: int, max_prompt_length: int,
               pointwise: bool = False) -> list[dict]:
    """trl's preference sequences. DPO: (chosen, rejected). KTO (`pointwise`): (the response, the next
    example's response, whose log-probability estimates the KL baseline), the desirability in the sort
    slot of response_indexs, which is the layout KTOCriterion reads."""
    chat = ChatFormat(tokenizer)
    out = []
    for k, e in enumerate(examples):
        responses = (e.responses[0], examples[(k + 1) % len(examples)].responses[0]) if pointwise else e.responses
        prompt, answers = _prompt_and_answers(chat, e.prompt, responses)
        out.append(_trl_sequence(prompt, answers, max_length, max_prompt_length, e.label if pointwise else 1))
    return out


def _trl_sequence(prompt: list, answers: list, max_length: int, max_prompt_length: int, sort: int) -> dict:
    if len(prompt) + sum(map(len, answers)) > max_length:  # trl's cut: the prompt from the left, then the answers pro rata
        prompt = prompt[-max_prompt_length:]
        room = max_length - len(prompt)
        if sum(map(len, answers)) > room:
            first = min(max(int(len(answers[0]) / sum(map(len, answers)) * room), 1), room - 1)  # each keeps a token
            answers = [answers[0][:first], answers[1][:room - first]]
    # Each response's row starts at the prompt's last token (the one that predicts its first token).
    rows = [[prompt[-1]] + a[:-1] for a in answers]
    n, (n0, n1) = len(prompt) - 1, map(len, rows)
    seq = n + n0 + n1
    mask = np.tri(seq, seq, dtype=bool)
    mask[n + n0:, n:n + n0] = False  # the second response cannot see the first
    return {"input_ids": prompt[:-1] + rows[0] + rows[1],
            "position_ids": list(range(n)) + list(range(n, n + n0)) + list(range(n, n + n1)),
            "response_0_labels": [0] * n + answers[0] + [0] * n1,
            "response_1_labels": [0] * (n + n0) + answers[1],
            "response_indexs": [n, n + n0, seq, sort], "attention_mask": mask}


def encode_pairs(examples, tokenizer, max_length: int, max_prompt_length: int) -> list[dict]:
    """Preference examples -> {"chosen": ids, "rejected": ids}: the prompt (earlier turns included) as SFT
    renders it, then the response and its end of turn, cut to max_length."""
    encoder = SftEncoder(tokenizer, max_length, max_prompt_length)
    out = []
    for e in examples:
        pair = {}
        for name, response in (("chosen", e.chosen), ("rejected", e.rejected)):
            prompt, answer = encoder.prompt_and_answer(e.prompt.then(response))
            pair[name] = prompt + answer
        out.append(pair)
    return out
