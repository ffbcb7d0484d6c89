"""Collators: padded batches of single examples, and packed (zero-padding) batches.

Both put the batch's count of real (non-pad) tokens under NUM_TOKENS; the trainer
takes it out before the forward and adds it up when it trains on the batch (counting
here would also count batches the DataLoader prefetches, or skips on resume). When the
trainer's sampler tags examples with the target-token count of their whole optimizer
step (GLOBAL_TARGETS, see engine.trainer), the batch carries it too: the trainer weighs
the loss by it.

A packed batch carries several examples per row (see llmx.data.packing). Attention
must stay inside each example, so next to `position_ids` (restarting at 0 per
example) it carries either
- `attention_mask`: a dense block-diagonal causal mask, bool, [batch, 1, seq, seq]
  (True = may attend). That is the 4-D form PaddleNLP's decoders take as is
  (Llama's `_prepare_decoder_attention_mask` leaves a 4-D mask alone and turns
  True/False into 0/-inf); built on CPU with numpy; or
- `attn_mask_startend_row_indices` (FlashMask, GPU only): int32 [batch, 1, seq], for
  column j the row where its example ends (rows from there on may not attend to j),
  as PaddleNLP's zero-padding data pipeline builds it. Used only when the model runs
  flash attention on a GPU and its forward takes the argument (see `use_flashmask`).
Padding after the last example of a row forms one more segment of its own, so no
row of the mask is empty.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import numpy as np
import paddle

from llmx.tokens import GLOBAL_TARGETS, IGNORE_INDEX, NUM_TOKENS, pad_batch


def _bookkeeping(features: Sequence[dict], tokens: int) -> dict:
    extra = {NUM_TOKENS: tokens}
    if GLOBAL_TARGETS in features[0]:
        extra[GLOBAL_TARGETS] = int(features[0][GLOBAL_TARGETS])
    return extra


class PadCollator:
    """Pads a batch of single examples (to its longest, or to `pad_to` tokens)."""

    carries_global_targets = True  # engine.trainer may tag features with GLOBAL_TARGETS

    def __init__(self, pad_id: int, pad_to: Optional[int] = None) -> None:
        self.pad_id = pad_id
        self.pad_to = pad_to

    def __call__(self, features: Sequence[dict]) -> dict:
        batch = pad_batch(features, self.pad_id, width=self.pad_to)
        return {**{k: paddle.to_tensor(v) for k, v in batch.items()},
                **_bookkeeping(features, int(batch["attention_mask"].sum()))}


class GlmCollator:
    """Pads a batch of GLM-encoded examples (ChatGLM v1, llmx.data.glm) with their 2-D positions and 4-D masks."""

    carries_global_targets = True

    def __init__(self, tokenizer, pad_to: Optional[int] = None) -> None:
        from llmx.families.chatglm import GlmLayout

        self.layout = GlmLayout(tokenizer)
        self.pad_to = pad_to

    def __call__(self, features: Sequence[dict]) -> dict:
        batch = self.layout.batch(features, width=self.pad_to)
        return {**{k: paddle.to_tensor(v) for k, v in batch.items()},
                **_bookkeeping(features, sum(len(f["input_ids"]) for f in features))}


def encoding_collator(tokenizer, pad_to: Optional[int] = None):
    """The collator of single (unpacked) examples for the tokenizer's encoding (llmx.data.encoders.sft_encoder's)."""
    if getattr(tokenizer, "llmx_encoding", "causal") == "glm":
        return GlmCollator(tokenizer, pad_to)
    return PadCollator(tokenizer.pad_token_id, pad_to=pad_to)


def segment_ids(seq_lens_per_row: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """[batch, width] int: the example each position belongs to; the padding tail is one more segment."""
    seg = np.empty((len(seq_lens_per_row), width), dtype=np.int64)
    for r, lens in enumerate(seq_lens_per_row):
        seg[r] = len(lens)  # the padding tail
        seg[r, :sum(lens)] = np.repeat(np.arange(len(lens)), lens)
    return seg


def block_causal_mask(seg: np.ndarray) -> np.ndarray:
    """bool [batch, 1, s, s]: position i may attend to j iff j <= i and both are in one segment."""
    s = seg.shape[1]
    same = seg[:, :, None] == seg[:, None, :]
    return (same & np.tri(s, dtype=bool))[:, None]


def startend_row_indices(seg: np.ndarray) -> np.ndarray:
    """int32 [batch, 1, s]: for each column, the (exclusive) end row of its segment (FlashMask, causal)."""
    b, s = seg.shape
    out = np.empty((b, s), dtype=np.int32)
    for r in range(b):
        ends = np.flatnonzero(np.diff(seg[r], append=-1)) + 1  # end of each run of equal ids
        out[r] = np.repeat(ends, np.diff(ends, prepend=0))
    return out[:, None]


class PackedCollator:
    """Batches packed sequences: pads to the batch's longest row (or to `pad_to`) and adds
    position ids and the mask that keeps attention inside each example. A feature without
    `seq_lens` is one unpacked example (so eval sets need no packing)."""

    carries_global_targets = True

    def __init__(self, pad_id: int, pad_to: Optional[int] = None, flashmask: bool = False) -> None:
        self.pad_id = pad_id
        self.pad_to = pad_to
        self.flashmask = flashmask

    def arrays(self, features: Sequence[dict]) -> dict:
        """The batch as numpy arrays (paddle-free; what __call__ turns into tensors)."""
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths) if self.pad_to is None else self.pad_to
        if max(lengths) > width:
            raise ValueError(f"packed sequence of {max(lengths)} tokens does not fit pad_to={width}")
        b = len(features)
        out = {"input_ids": np.full((b, width), self.pad_id, dtype="int64"),
               "labels": np.full((b, width), IGNORE_INDEX, dtype="int64"),
               "position_ids": np.zeros((b, width), dtype="int64")}
        for r, f in enumerate(features):
            n = lengths[r]
            out["input_ids"][r, :n] = f["input_ids"]
            out["labels"][r, :n] = f["labels"]
            out["position_ids"][r, :n] = f.get("position_ids", range(n))
            out["position_ids"][r, n:] = np.arange(width - n)  # the padding tail is its own segment
        seg = segment_ids([f.get("seq_lens", [len(f["input_ids"])]) for f in features], width)
        if self.flashmask:
            out["attn_mask_startend_row_indices"] = startend_row_indices(seg)
        else:
            out["attention_mask"] = block_causal_mask(seg)
        return out

    def __call__(self, features: Sequence[dict]) -> dict:
        tensors = {k: paddle.to_tensor(v) for k, v in self.arrays(features).items()}
        return {**tensors, **_bookkeeping(features, sum(len(f["input_ids"]) for f in features))}


def use_flashmask(model, device: str) -> bool:
    """FlashMask only where it can run: a GPU, flash attention switched on in the model
    config, and a forward that takes `attn_mask_startend_row_indices` (Llama, Qwen2 in
    PaddleNLP 3.0.0b4); not under prefix tuning, whose cached prefix keys the row indices
    do not cover. Everywhere else the dense 4-D mask is used. Untested here: no GPU in CI."""
    if device != "gpu" or hasattr(model, "prefix_config"):
        return False
    inner = model
    while hasattr(inner, "model") and isinstance(getattr(inner, "model"), paddle.nn.Layer) and not hasattr(inner, "lm_head"):
        inner = inner.model  # through PEFT wrappers to the *ForCausalLM
    if not getattr(getattr(inner, "config", None), "use_flash_attention", False):
        return False
    return "attn_mask_startend_row_indices" in inspect.signature(inner.forward).parameters
