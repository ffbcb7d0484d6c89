"""Conventions of token batches that data formats and the engine share (paddle-free)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

IGNORE_INDEX = -100  # label of positions without loss: the ignore index of PaddleNLP's causal-LM criterions

# Keys a collator adds to a batch for the trainer (llmx.engine.trainer), which takes them out before the forward:
NUM_TOKENS = "num_tokens"  # the batch's real (non-pad) tokens, for tokens/s
GLOBAL_TARGETS = "global_target_tokens"  # the loss units of the batch's whole optimizer step
# A micro-batch's own count of loss units, from collators whose losses are means over something other
# than label tokens (preference pairs): the trainer weighs by it instead of counting `labels`.
LOCAL_TARGETS = "local_targets"


def pad_batch(features: Sequence[dict], pad_id: int, left: bool = False, width: Optional[int] = None) -> dict:
    """Pad `input_ids` (and `labels`, when present) to the longest example (or to `width`); numpy
    int64 arrays plus the 0/1 `attention_mask`."""
    longest = max(len(f["input_ids"]) for f in features)
    if width is not None and longest > width:
        raise ValueError(f"an example of {longest} tokens does not fit a batch of width {width}")
    width = longest if width is None else width
    out = {"input_ids": np.full((len(features), width), pad_id, dtype="int64"),
           "attention_mask": np.zeros((len(features), width), dtype="int64")}
    has_labels = "labels" in features[0]
    if has_labels:
        out["labels"] = np.full((len(features), width), IGNORE_INDEX, dtype="int64")
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        span = slice(width - n, width) if left else slice(0, n)
        out["input_ids"][i, span] = f["input_ids"]
        out["attention_mask"][i, span] = 1
        if has_labels:
            out["labels"][i, span] = f["labels"]
    return out
