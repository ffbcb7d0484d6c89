"""Batched greedy generation for evaluation and samples."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import paddle

from llmx.tokens import pad_batch


@contextmanager
def whole_vocab_logits(model):
    """A tensor-parallel model keeps its logits split over the vocabulary (the training loss is the
    vocab-parallel one); generating from a split would pick each rank's best token of its own shard.
    While generating, the lm_head gathers the whole vocabulary."""
    configs = [m.config for m in (model, getattr(model, "model", None)) if getattr(m, "config", None) is not None]
    split = [c for c in configs if getattr(c, "tensor_parallel_degree", 1) > 1 and getattr(c, "tensor_parallel_output", False)]
    for c in split:
        c.tensor_parallel_output = False
    try:
        yield
    finally:
        for c in split:
            c.tensor_parallel_output = True


@paddle.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """New token ids for each prompt (left-padded batches), cut at the first eos."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = []
    glm = None
    if getattr(tokenizer, "llmx_encoding", "causal") == "glm":
        from llmx.families.chatglm import GlmLayout

        glm = GlmLayout(tokenizer)
    with whole_vocab_logits(model):
        for start in range(0, len(prompts), batch_size):
            chunk = [{"input_ids": p} for p in prompts[start:start + batch_size]]
            if glm is not None:  # ChatGLM v1: 2-D positions and the 4-D [gMASK] mask, which generate extends
                batch = glm.batch(chunk, left=True)
            else:
                batch = pad_batch(chunk, pad, left=True)
                batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clip(min=0)
            ids, _ = model.generate(
                **{k: paddle.to_tensor(v) for k, v in batch.items()},
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
