"""Preference (DPO, RM) and pointwise (KTO) examples encoded, packed and batched for training (files are
read by llmx.data.formats.read_preference). Paddle and PaddleNLP are imported only inside the functions
that build tensors or packs.

`encode_trl` writes what `paddlenlp.trl.preprocess_preference_data` writes (one sequence prompt +
first response + second response, the second unable to see the first; next-token labels with 0 as
"not learned"), but from llmx.data.chat's rendering: trl renders chat templates with PaddleNLP's
`encode_chat_inputs`, which fails on templates that are not turn-local, and renders a tokenizer
without a template otherwise than SFT does. So a preference run sees prompts exactly as the SFT run
it starts from did.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from llmx.data.chat import ChatFormat, TemplateError
from llmx.data.dialogue import Dialogue, PreferenceExample
from llmx.data.sft import SftEncoder
from llmx.tokens import GLOBAL_TARGETS, LOCAL_TARGETS, NUM_TOKENS, pad_batch


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


# ------------------------------------------------------------------- trl's layout: packs and batches


class Packs(list):
    """Packed sequences; their loss units are the examples (pairs) they hold: the trainer weighs each
    micro-batch's mean loss by them, so every layout computes one process's mean over the step's pairs."""

    def target_token_counts(self) -> np.ndarray:
        return np.array([len(p["response_indexs"]) for p in self], dtype=np.int64)


def pack(encoded: Sequence[dict], tokenizer, max_length: int, zero_padding: bool) -> tuple[list[dict], dict]:
    """Sequences of at most max_length tokens: several examples each (trl's ZeroPaddingMapDataset), or
    one each. Returns the packs and their statistics (non-pad fraction of max_length-token rows)."""
    from paddlenlp.datasets import ZeroPaddingMapDataset

    if zero_padding:
        packs = Packs(ZeroPaddingMapDataset(list(encoded), tokenizer, max_length))
    else:  # trl's collator only takes packs: an unpacked run is one example per pack
        packs = Packs(ZeroPaddingMapDataset._pad_batch_records([ex]) for ex in encoded)
    tokens = sum(len(p["input_ids"]) for p in packs)
    stats = {"examples": len(encoded), "sequences": len(packs),
             "non_pad_fraction": tokens / max(len(packs) * max_length, 1)}
    return packs, stats


class PreferenceCollator:
    """trl's preference_collate_fn (rows padded to max_length) as paddle tensors, plus the batch's real
    token count for llmx's tokens/s and its pairs (examples), by which the trainer weighs its loss."""

    carries_global_targets = True  # engine.trainer may tag features with the step's pairs (GLOBAL_TARGETS)

    def __init__(self, max_length: int, pointwise: bool = False) -> None:
        self.max_length = max_length
        self.data_type = "pointwise" if pointwise else "pairwise"

    def __call__(self, features: Sequence[dict]) -> dict:
        import paddle
        from paddlenlp import trl

        batch = trl.preference_collate_fn(list(features), max_seq_len=self.max_length, data_type=self.data_type)
        extra = {NUM_TOKENS: sum(len(f["input_ids"]) for f in features),
                 LOCAL_TARGETS: sum(len(f["response_indexs"]) for f in features)}
        if GLOBAL_TARGETS in features[0]:
            extra[GLOBAL_TARGETS] = int(features[0][GLOBAL_TARGETS])
        return {**{k: paddle.to_tensor(v) for k, v in batch.items()}, **extra}


# ------------------------------------------------------------------------- reward models: pairs


class PairCollator:
    """A batch of pairs (encode_pairs) as one padded block: the chosen sequences, then the rejected ones."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features) -> dict:
        import paddle

        rows = [{"input_ids": f["chosen"]} for f in features] + [{"input_ids": f["rejected"]} for f in features]
        batch = pad_batch(rows, self.pad_id)
        return {"input_ids": paddle.to_tensor(batch["input_ids"]),
                "attention_mask": paddle.to_tensor(batch["attention_mask"]),
                NUM_TOKENS: int(batch["attention_mask"].sum())}
