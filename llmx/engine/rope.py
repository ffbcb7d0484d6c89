"""RoPE scaling (`model.rope_scaling`, or a checkpoint's config.json `rope_scaling`) in PaddleNLP's rotary layers.

PaddleNLP 3.0.0b4's rotary classes scale in their own ways or not at all: Llama's class reads its own
`rope_scaling_type`/`rope_scaling_factor` (linear, a static NTK and a dynamic NTK that differs from transformers')
plus Llama 3's type, Qwen2's, Mistral's, Mixtral's, Gemma's and Yuan's read no scaling, none has YaRN, and the
cached tables stop at max_position_embeddings. So llmx computes the tables itself, from llmx.rope's inverse
frequencies (the same numbers as transformers' for every type), and hands them out through each rotary layer's
own forward, in the layout the family's attention expects (Family.rope_layout). The tables grow with the longest
sequence seen; dynamic NTK refits its frequencies as transformers does: to the current length once it passes
max_position_embeddings, back to the original frequencies once a sequence fits the context again. Static export
traces tables built for max_position_embeddings (dynamic NTK refits in dynamic mode only).
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import numpy as np
import paddle

from llmx import rope

log = logging.getLogger(__name__)

# Family.rope_layout -> the shape a [seq, dim] table takes in the family's attention.
LAYOUTS = {
    "seq_dim": lambda t: t,  # Mistral
    "batch_seq_heads_dim": lambda t: t[None, :, None, :],  # Llama, Qwen2, Mixtral, Gemma: [1, seq, 1, dim]
    "batch_heads_seq_dim": lambda t: t[None, None, :, :],  # Yuan: [1, 1, seq, dim]
}
UNUSED_TABLES = ("cos_cached", "sin_cached", "cos_sin_table")
ROTARY_LAYER = "rotary_emb"  # the attribute PaddleNLP's attentions keep their rotary layer under


class ScaledTables:
    """The cos/sin tables of one head size and base under one scaling, shared by every rotary layer that has
    them. Each layer holds them as its own tensor attributes (non-persistable buffers, as PaddleNLP's cached
    tables are): a static export (llmx.infer.export) finds them there, and checkpoints do not save them."""

    def __init__(self, scaling: dict, dim: int, base: float, max_positions: int, layout: str):
        self.scaling, self.dim, self.base, self.max_positions = scaling, dim, base, max_positions
        self.shape = LAYOUTS[layout]
        self.dynamic = rope.scaling_type(scaling) == "dynamic"
        self.layers = []
        self._fit(max_positions)

    def attach(self, layer) -> None:
        """Make `layer`'s forward hand out these tables (its __call__ runs the instance's forward)."""
        self.layers.append(layer)
        for own in UNUSED_TABLES:  # PaddleNLP's tables (up to max_position_embeddings per layer) are not read now
            if getattr(layer, own, None) is not None:
                setattr(layer, own, None)
        layer.llmx_rope_cos, layer.llmx_rope_sin = self.cos, self.sin
        layer.forward = functools.partial(self.forward, layer)

    def _fit(self, length: int) -> None:
        """Frequencies for sequences of `length` (dynamic NTK's depend on it), tables for that many positions."""
        self.fitted_to = length
        inv_freq, attention = rope.inverse_frequencies(self.scaling, self.dim, self.base, self.max_positions,
                                                       seq_len=length)
        angles = np.outer(np.arange(length, dtype=np.float64), inv_freq.astype(np.float64))
        angles = np.concatenate([angles, angles], axis=-1)  # rotate_half pairs dimension i with i + dim/2
        self.cos = paddle.to_tensor((np.cos(angles) * attention).astype(np.float32))
        self.sin = paddle.to_tensor((np.sin(angles) * attention).astype(np.float32))
        for layer in self.layers:
            layer.llmx_rope_cos, layer.llmx_rope_sin = self.cos, self.sin

    def forward(self, layer, x, seq_len=None):
        if isinstance(seq_len, int):  # (a traced static program passes a symbolic length: the tables as they are)
            if self.dynamic:
                # transformers' rule: refit when a sequence is longer than the one fitted to, and back to the
                # original frequencies when one fits the context while the fit is for a longer one.
                if seq_len > self.fitted_to or seq_len < self.max_positions < self.fitted_to:
                    self._fit(max(seq_len, self.max_positions))
            elif seq_len > self.fitted_to:  # the same frequencies over more positions
                self._fit(seq_len)
        cos, sin = self.shape(layer.llmx_rope_cos[:seq_len]), self.shape(layer.llmx_rope_sin[:seq_len])
        return cos.cast(x.dtype), sin.cast(x.dtype)


def scale_rotary_layers(model, fam, config) -> int:
    """Give every rotary layer of `model` (a family built with `config`) the tables of `config.rope_scaling`;
    returns how many layers now use them (0 without a scaling)."""
    scaling: Optional[dict] = getattr(config, "rope_scaling", None)
    if rope.scaling_type(scaling) is None:
        return 0
    rope.check(scaling, "rope_scaling")  # validated before launch; a config built by hand is checked here
    if fam.rope_layout is None:
        raise ValueError(f"model family {fam.name} takes no RoPE scaling ({fam.no_rope_scaling})")
    shared = {}
    layers = [layer for name, layer in model.named_sublayers() if name.rsplit(".", 1)[-1] == ROTARY_LAYER]
    for layer in layers:
        key = (int(layer.dim), float(layer.base))
        if key not in shared:
            shared[key] = ScaledTables(dict(scaling), key[0], key[1], int(config.max_position_embeddings),
                                       fam.rope_layout)
        shared[key].attach(layer)
    if not layers:  # a record naming a layout for a model without such layers: fail loudly, not silently unscaled
        raise ValueError(f"model family {fam.name}: {type(model).__name__} has no {ROTARY_LAYER} layers to scale")
    log.info("RoPE scaling %s in %d rotary layers", scaling, len(layers))
    return len(layers)
