"""Model runners: a batch of sequences of different lengths, left-aligned in one padded block, and the
two operations the engine needs: `prefill` (new prompts -> their batch, last logits) and `decode` (one
token per row -> next logits). Rows are reordered, dropped and joined with `take` and `join`.

DynamicRunner keeps a KV cache: the model's own (a (key, value) pair per layer, [batch, seq, heads,
head_dim], as PaddleNLP's decoder layers concatenate them; Bloom's and OPT's passed as `cache=`, OPT's
as named pairs; Yuan's with a third tensor, each row's last two hidden states, which has no sequence
axis), padded on the left; a row's padding is masked out by the 2-D attention mask and its positions
are counted from its first real token, so each row computes what it would alone; where it would not
(Yuan), each row runs alone and the batch only holds them together. The family record names the runner
(`Family.engine_cache`, RUNNERS). StaticRunner runs an exported program
(llmx.infer.export) through Paddle Inference; that program has no cache inputs, so each step
recomputes the whole (padded) sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import paddle

from llmx.tokens import pad_batch


@dataclass
class Batch:
    mask: np.ndarray  # [rows, width] int64: 1 where a row has a real token in the cache
    cache: list  # tensors [rows, width, ...] (the KV cache; StaticRunner: the token ids)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def positions(self) -> np.ndarray:
        """The position of each row's next token: how many real tokens it has."""
        return self.mask.sum(-1)

    def cells(self) -> int:
        return int(self.mask.size)


def _pad_left(x, n: int, axis: Optional[int] = 1):
    if n == 0 or axis is None:  # (a per-row state without positions: nothing to pad)
        return x
    shape = list(x.shape)
    shape[axis] = n
    if isinstance(x, np.ndarray):
        return np.concatenate([np.zeros(shape, x.dtype), x], axis=axis)
    return paddle.concat([paddle.zeros(shape, x.dtype), x], axis=axis)


def _take(x, rows: np.ndarray, first_col: int, batch_axis: int = 0, seq_axis: int = 1):
    if isinstance(x, np.ndarray):
        return x[rows, first_col:]
    x = paddle.index_select(x, paddle.to_tensor(rows, dtype="int64"), axis=batch_axis)
    return x if first_col == 0 or seq_axis is None else paddle.slice(x, [seq_axis], [first_col], [x.shape[seq_axis]])


def _concat(a, b, axis: int = 0):
    return np.concatenate([a, b], axis=0) if isinstance(a, np.ndarray) else paddle.concat([a, b], axis=axis)


def take(batch: Batch, rows: list[int], axes=None) -> Optional[Batch]:
    """The batch of these rows (in this order, repeats allowed), without columns all of them pad.
    `axes`: (batch axis, sequence axis or None) of each cache tensor; default (0, 1)."""
    if not rows:
        return None
    idx = np.asarray(rows, dtype="int64")
    mask = batch.mask[idx]
    used = np.nonzero(mask.any(0))[0]
    first = int(used[0]) if used.size else mask.shape[1]
    if first == 0 and np.array_equal(idx, np.arange(batch.rows)):
        return batch
    axes = axes or [(0, 1)] * len(batch.cache)
    return Batch(mask[:, first:], [_take(t, idx, first, *ax) for t, ax in zip(batch.cache, axes)])


def join(a: Optional[Batch], b: Optional[Batch], axes=None) -> Optional[Batch]:
    """Rows of a, then rows of b, right-aligned at a common width."""
    if a is None or b is None:
        return a if b is None else b
    width = max(a.width, b.width)
    pa, pb = width - a.width, width - b.width
    axes = axes or [(0, 1)] * len(a.cache)
    return Batch(np.concatenate([_pad_left(a.mask, pa), _pad_left(b.mask, pb)], axis=0),
                 [_concat(_pad_left(x, pa, s), _pad_left(y, pb, s), bx) for x, y, (bx, s) in zip(a.cache, b.cache, axes)])


class DynamicRunner:
    """A PaddleNLP causal LM in dynamic mode, with its KV cache given as `past_key_values=`, new tokens only."""

    cache_keyword = "past_key_values"

    def __init__(self, model, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.axes = None  # (batch axis, sequence axis or None) of each cache tensor: found by a probe
        self.layer_entry = None  # how the model groups one layer's tensors (tuple, named pair): `_make` or the type
        self.per_layer = 2

    def _forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: Optional[list]):
        from llmx.engine.generate import whole_vocab_logits

        n = self.per_layer
        layers = None if past is None else [self.layer_entry(past[i:i + n]) for i in range(0, len(past), n)]
        with whole_vocab_logits(self.model):
            out = self.model(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask),
                             position_ids=paddle.to_tensor(positions), use_cache=True, return_dict=True,
                             **{self.cache_keyword: layers})
        logits, past = (out[0], out[1]) if isinstance(out, tuple) else (out.logits, out.past_key_values)
        self.per_layer = len(past[0])
        self.layer_entry = getattr(type(past[0]), "_make", type(past[0]))
        cache = [t for layer in past for t in layer]
        return logits[:, -1].astype("float32").numpy(), cache

    def _find_axes(self) -> None:
        """Where each cache tensor keeps rows and positions (families differ: [batch, seq, heads, dim],
        [batch, heads, seq, dim], [seq, batch, ...]; Yuan's hidden-state memory has no positions): a probe of
        3 prompts x 7 tokens shows it."""
        rows, width = 3, 7
        ids = np.full((rows, width), self.pad_id, "int64")
        mask = np.ones((rows, width), "int64")
        _, cache = self._forward(ids, mask, np.tile(np.arange(width), (rows, 1)), None)
        self.axes = []
        for t in cache:
            shape = list(t.shape)
            b = [i for i in (0, 1) if shape[i] == rows]
            s = [i for i in range(len(shape)) if shape[i] == width and i not in b[:1]]
            if len(b) != 1 or len(s) > 1:
                raise NotImplementedError(f"{type(self.model).__name__}: cannot tell the batch and sequence axes of "
                                          f"its KV cache (shape {shape} for {rows} prompts of {width} tokens)")
            self.axes.append((b[0], s[0] if s else None))

    @paddle.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Batch]:
        if self.axes is None:
            self._find_axes()
        padded = pad_batch([{"input_ids": p} for p in prompts], self.pad_id, left=True)
        mask = padded["attention_mask"]
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        logits, cache = self._forward(padded["input_ids"], mask, positions, None)
        return logits, Batch(mask, cache)

    @paddle.no_grad()
    def decode(self, batch: Batch, tokens: np.ndarray) -> tuple[np.ndarray, Batch]:
        positions = batch.positions()[:, None]
        mask = np.concatenate([batch.mask, np.ones((batch.rows, 1), "int64")], axis=1)
        logits, cache = self._forward(tokens.reshape(-1, 1).astype("int64"), mask, positions, batch.cache)
        return logits, Batch(mask, cache)


class CacheArgumentRunner(DynamicRunner):
    """Bloom and OPT: the KV cache goes in as `cache=` (OPT's as named pairs, [batch, heads, seq, dim]). Their
    positions come from the 2-D mask's running count (Bloom's ALiBi, OPT's learned positions; position_ids are
    ignored), which for a left-padded row counts from its first real token, as alone."""

    cache_keyword = "cache"


class WholeSequenceRunner(DynamicRunner):
    """Yuan: every row runs alone (its localized filtering would convolve a left-padded prompt's pads into its
    first tokens, and in its published configs, reset_position_ids, it builds its own causal mask from the ids,
    blocked at each eod token, and ignores the attention mask), given its whole sequence each step: the model
    keeps only the new token but builds that mask from all of them, as PaddleNLP's `generate` gives them. Its
    cache holds each layer's last two hidden states (no positions) beside the keys and values; the batch's
    last cache entry is the token ids."""

    def _alone(self, ids: np.ndarray, past: Optional[list]) -> tuple[np.ndarray, Batch]:
        ones = np.ones_like(ids)
        positions = np.arange(ids.shape[1])[None] if past is None else np.asarray([[ids.shape[1] - 1]])
        logits, cache = self._forward(ids, ones, positions, past)
        return logits, Batch(ones, cache + [ids])

    def _rows(self, results: list) -> tuple[np.ndarray, Batch]:
        batch = None
        for _, part in results:
            batch = join(batch, part, self.axes)
        return np.concatenate([logits for logits, _ in results], axis=0), batch

    @paddle.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Batch]:
        if self.axes is None:
            self._find_axes()
            self.axes.append((0, 1))  # the token ids
        return self._rows([self._alone(np.asarray([p], "int64"), None) for p in prompts])

    @paddle.no_grad()
    def decode(self, batch: Batch, tokens: np.ndarray) -> tuple[np.ndarray, Batch]:
        results = []
        for i, token in enumerate(tokens.tolist()):
            row = take(batch, [i], self.axes)  # (without its padding)
            ids = np.concatenate([row.cache[-1], [[token]]], axis=1).astype("int64")
            results.append(self._alone(ids, row.cache[:-1]))
        return self._rows(results)


# The runner of each way a family's forward takes its KV cache (llmx.families.record.Family.engine_cache).
RUNNERS = {"past_key_values": DynamicRunner, "cache": CacheArgumentRunner, "whole_sequence": WholeSequenceRunner}


class StaticRunner:
    axes = None  # its "cache" is the token ids, [batch, seq]

    """An exported program (input_ids, attention_mask, position_ids) -> last logits, run through
    Paddle Inference; no cache: every step runs the whole sequence."""

    def __init__(self, predictor, pad_id: int) -> None:
        self.predictor, self.pad_id = predictor, pad_id
        self.inputs = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
        self.output = predictor.get_output_handle(predictor.get_output_names()[0])

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        for handle, array in zip(self.inputs, (ids, mask, positions)):
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(np.ascontiguousarray(array, dtype="int64"))
        self.predictor.run()
        return self.output.copy_to_cpu().astype("float32")

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Batch]:
        padded = pad_batch([{"input_ids": p} for p in prompts], self.pad_id, left=True)
        mask, ids = padded["attention_mask"], padded["input_ids"]
        return self._run(ids, mask), Batch(mask, [ids])

    def decode(self, batch: Batch, tokens: np.ndarray) -> tuple[np.ndarray, Batch]:
        ids = np.concatenate([batch.cache[0], tokens.reshape(-1, 1).astype("int64")], axis=1)
        mask = np.concatenate([batch.mask, np.ones((batch.rows, 1), "int64")], axis=1)
        return self._run(ids, mask), Batch(mask, [ids])


class RecomputeRunner:
    """A model whose adapter acts on attention or hidden states, not on weights (prefix tuning prepends its own
    past_key_values; ReFT edits the hidden states at prompt positions): its cache cannot be the model's KV
    cache, so every step runs the whole sequence, as StaticRunner does. The "cache" is the token ids and a
    mask of each row's prompt tokens (ReFT's intervention positions are counted in the prompt)."""

    axes = None

    def __init__(self, model, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.positions = getattr(model, "llmx_positions", None)  # ReFT: (first, last) prompt tokens
        self.interventions = len(getattr(model, "sorted_keys", ()))

    @paddle.no_grad()
    def _run(self, ids: np.ndarray, mask: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        inputs = {"input_ids": paddle.to_tensor(ids), "attention_mask": paddle.to_tensor(mask),
                  "position_ids": paddle.to_tensor(np.clip(mask.cumsum(-1) - 1, 0, None))}
        if self.positions is not None:
            from llmx.engine.reft import locations

            rows = [[locations(int(p.sum()), *self.positions, offset=int(p.argmax()))] * self.interventions
                    for p in prompt]
            inputs["intervention_locations"] = paddle.to_tensor(np.asarray(rows, dtype="int64"))
        out = self.model(**inputs)
        logits = out[0] if isinstance(out, tuple) else out.logits
        return logits[:, -1].astype("float32").numpy()

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Batch]:
        padded = pad_batch([{"input_ids": p} for p in prompts], self.pad_id, left=True)
        mask, ids = padded["attention_mask"], padded["input_ids"]
        return self._run(ids, mask, mask), Batch(mask, [ids, mask.copy()])

    def decode(self, batch: Batch, tokens: np.ndarray) -> tuple[np.ndarray, Batch]:
        ids = np.concatenate([batch.cache[0], tokens.reshape(-1, 1).astype("int64")], axis=1)
        mask = np.concatenate([batch.mask, np.ones((batch.rows, 1), "int64")], axis=1)
        prompt = np.concatenate([batch.cache[1], np.zeros((batch.rows, 1), "int64")], axis=1)
        return self._run(ids, mask, prompt), Batch(mask, [ids, prompt])
