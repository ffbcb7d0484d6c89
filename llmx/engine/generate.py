"""Batched greedy generation for evaluation and samples."""
from __future__ import annotations

from typing import Sequence

import paddle

from llmx.tokens import pad_batch


@paddle.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """New token ids for each prompt (left-padded batches), cut at the first eos."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [{"input_ids": p} for p in prompts[start:start + batch_size]]
        batch = pad_batch(chunk, pad, left=True)
        mask = batch["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clip(min=0)
        ids, _ = model.generate(
            input_ids=paddle.to_tensor(batch["input_ids"]),
            attention_mask=paddle.to_tensor(mask),
            position_ids=paddle.to_tensor(position_ids),
            max_new_tokens=max_new_tokens,
            decode_strategy="greedy_search",
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for row in ids.numpy().tolist():
            outputs.append(row[:row.index(eos)] if eos in row else row)
    if was_training:
        model.train()
    return outputs
