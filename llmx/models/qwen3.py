"""Qwen3 (dense) on PaddleNLP's Qwen2 building blocks: Qwen2's decoder layer, MLP, norms, embedding, head,
loss, pretrained-model machinery and pipeline class, with Qwen3's attention in place of Qwen2's.

Qwen3's attention differs from Qwen2's in four ways: q and k are RMS-normalised per head (over head_dim,
before RoPE); head_dim comes from the config (128 in every published size, whatever hidden / heads is); the
projections carry a bias only when `attention_bias` says so (never in the published sizes); and layers from
`max_window_layers` on may attend within a sliding window (`use_sliding_window`, `layer_types`), as
transformers reads these settings. Everything else is Qwen2's, so the classes here subclass Qwen2's and
Qwen2's decoder layer is built around `Qwen3Attention` (`_qwen3_attention`). The tensors keep Qwen2's
PaddleNLP names (`qwen2.layers.N...`); Hugging Face's are Qwen3's (`model.layers.N...`). Qwen3-MoE
(llmx.models.qwen3_moe) builds its decoder layers around the same `Qwen3Attention`.
"""
from __future__ import annotations

import contextlib
import re
from typing import List, Optional

import paddle
from paddlenlp.transformers.conversion_utils import StateDictNameMapping
from paddlenlp.transformers.llama import modeling as llama
from paddlenlp.transformers.qwen2 import modeling as qwen2
from paddlenlp.transformers.qwen2.configuration import Qwen2Config
from paddlenlp.transformers.qwen2.modeling_pp import Qwen2ForCausalLMPipe

from llmx.models import sum_gradient_over_tensor_parallel_ranks
from llmx.models.gemma2 import window_mask  # by mask column, as transformers counts (the cache's index)

__all__ = ["Qwen3Config", "Qwen3ForCausalLM", "Qwen3ForCausalLMPipe"]


class Qwen3Config(Qwen2Config):
    """Qwen2's config plus `head_dim`, `attention_bias` and transformers' sliding-window keys (defaults:
    transformers 4.55's Qwen3Config)."""

    model_type = "qwen3"

    def __init__(self, head_dim: int = 128, attention_bias: bool = False, use_sliding_window: bool = False,
                 sliding_window: Optional[int] = 4096, max_window_layers: int = 28,
                 layer_types: Optional[List[str]] = None, **kwargs):
        super().__init__(use_sliding_window=use_sliding_window, sliding_window=sliding_window,
                         max_window_layers=max_window_layers, **kwargs)
        self.head_dim = head_dim
        self.attention_bias = attention_bias
        # As transformers: without use_sliding_window no layer slides; with it, layers from max_window_layers on.
        slides = use_sliding_window and sliding_window is not None
        self.layer_types = list(layer_types) if layer_types else [
            "sliding_attention" if slides and i >= max_window_layers else "full_attention"
            for i in range(self.num_hidden_layers)]

    def window_of(self, layer: int) -> Optional[int]:
        """The sliding window of decoder layer `layer`, None where it attends to the whole sequence."""
        if not self.use_sliding_window or self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window


class HeadRMSNorm(qwen2.Qwen2RMSNorm):
    """Qwen2's RMSNorm over one head's features (`head_dim` of them): Qwen3's q_norm and k_norm. The weight is
    the same on every head, so tensor parallelism replicates it, and sums its gradient over the ranks."""

    def __init__(self, config: Qwen3Config):
        super().__init__(config)
        self.weight = self.create_parameter([config.head_dim], default_initializer=paddle.nn.initializer.Constant(1.0))
        if config.tensor_parallel_degree > 1:
            sum_gradient_over_tensor_parallel_ranks(self.weight)


class Qwen3Attention(qwen2.Qwen2Attention):
    """Qwen2's attention at Qwen3's shapes, with q_norm and k_norm (and a sliding window where the layer has one).
    Its config needs only Qwen2's keys plus `head_dim` and `attention_bias`: Qwen3-MoE's serves as well."""

    def __init__(self, config: Qwen3Config, layerwise_recompute: bool = True, skip_recompute_ops=None):
        for key in ("fuse_attention_qkv", "sequence_parallel", "use_fused_rope"):
            if getattr(config, key, False):
                raise ValueError(f"Qwen3: {key}=True is not supported by llmx's Qwen3 attention")
        super().__init__(config, layerwise_recompute, skip_recompute_ops)
        # Qwen2's projections assume head_dim = hidden / heads and biases on q, k, v: made again at Qwen3's shapes.
        self.head_dim = config.head_dim
        hidden, bias = config.hidden_size, config.attention_bias
        q, kv = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        if config.tensor_parallel_degree > 1:
            column, row = qwen2.linear_utils.ColumnParallelLinear, qwen2.linear_utils.RowParallelLinear
            self.q_proj, self.k_proj, self.v_proj = (column(hidden, n, has_bias=bias, gather_output=False)
                                                     for n in (q, kv, kv))
            self.o_proj = row(q, hidden, has_bias=bias, input_is_parallel=True)
        else:
            self.q_proj, self.k_proj, self.v_proj = (qwen2.Linear(hidden, n, bias_attr=bias) for n in (q, kv, kv))
            self.o_proj = qwen2.Linear(q, hidden, bias_attr=bias)
        self.rotary_emb = qwen2.Qwen2RotaryEmbedding(self.head_dim, max_position_embeddings=config.max_position_embeddings,
                                                     base=config.rope_theta)
        self.q_norm, self.k_norm = HeadRMSNorm(config), HeadRMSNorm(config)
        self.sliding_window = None  # set per layer by the model (Qwen2's layers are built without their index)

    def forward(self, hidden_states, position_ids=None, past_key_value=None, attention_mask=None,
                output_attentions=False, use_cache=False, attn_mask_startend_row_indices=None, **kwargs):
        """Qwen2's attention (without its fused-qkv, sequence-parallel and fused-RoPE branches, which
        Qwen3's checks refuse) with q and k normalised per head before RoPE, and the sliding window."""
        # [batch, seq, heads, head_dim], head counts spelled out: a static program needs them known
        query = self.q_norm(self.q_proj(hidden_states).reshape([0, 0, self.num_heads, self.head_dim]))
        kv_heads = [0, 0, self.num_key_value_heads, self.head_dim]
        key = self.k_norm(self.k_proj(hidden_states).reshape(kv_heads))
        value = self.v_proj(hidden_states).reshape(kv_heads)
        past = 0 if past_key_value is None else past_key_value[0].shape[1]
        cos, sin = self.rotary_emb(value, seq_len=past + key.shape[1])
        query, key = qwen2.apply_rotary_pos_emb(query, key, cos, sin, position_ids)
        if past_key_value is not None:
            key = paddle.concat([past_key_value[0], key], axis=1)
            value = paddle.concat([past_key_value[1], value], axis=1)
        present = (key, value) if use_cache else None
        if not self.config.use_flash_attention:  # flash attention takes grouped kv heads as they are
            key = qwen2.repeat_kv(key, self.num_key_value_groups)
            value = qwen2.repeat_kv(value, self.num_key_value_groups)
        if self.sliding_window is not None:
            attention_mask = window_mask(attention_mask, self.sliding_window)
        if paddle.in_dynamic_mode():
            out = self.attn_func(query, self.config, key, value, attention_mask, output_attentions,
                                 attn_mask_startend_row_indices=attn_mask_startend_row_indices, training=self.training)
        else:  # traced by paddle.jit (static export): see traced_attention
            out = traced_attention(query, self.config, key, value, attention_mask, output_attentions,
                                   attn_mask_startend_row_indices=attn_mask_startend_row_indices)
        out, weights = out if output_attentions else (out, None)
        outputs = (self.o_proj(out),) + ((weights,) if output_attentions else ()) + ((present,) if use_cache else ())
        return outputs[0] if len(outputs) == 1 else outputs


def traced_attention(*args, **kwargs):
    """Attention while paddle.jit traces a static program: PaddleNLP's Qwen2 attention compares the traced
    shapes with `!=`, which dy2static cannot turn into a Python bool, and the trace fails (paddlenlp 3.0.0b4 on
    paddle 3.3.1; Qwen2's own export fails so). Llama's attention is the same computation (softmax(q k^T /
    sqrt(head_dim) + mask) v) with those checks in dynamic mode only; without dropout, as inference runs."""
    return llama.scaled_dot_product_attention(*args, **kwargs)


@contextlib.contextmanager
def _qwen3_attention():
    """Qwen2's decoder layer builds `Qwen2Attention` by its module-level name: Qwen3's while Qwen3 builds."""
    qwen2_attention = qwen2.Qwen2Attention
    qwen2.Qwen2Attention = Qwen3Attention
    try:
        yield
    finally:
        qwen2.Qwen2Attention = qwen2_attention


def _set_windows(model, config: Qwen3Config, first: int = 0) -> None:
    """Each attention's sliding window, by its decoder layer's index: in its name (`qwen2.layers.N.self_attn`),
    or in a pipeline, its place among the pipeline's layers (`M.self_attn`) less the `first` decoder's place."""
    for name, layer in model.named_sublayers():
        if isinstance(layer, Qwen3Attention):
            layer.sliding_window = config.window_of(int(re.search(r"(\d+)\.self_attn$", name).group(1)) - first)


class Qwen3ForCausalLM(qwen2.Qwen2ForCausalLM):
    config_class = Qwen3Config

    def __init__(self, config: Qwen3Config):
        with _qwen3_attention():
            super().__init__(config)
        _set_windows(self, config)

    @classmethod
    def _get_name_mappings(cls, config: Qwen3Config) -> List[StateDictNameMapping]:
        """Qwen2's Hugging Face name map, less the biases Qwen3 does not have, plus q_norm and k_norm (and
        o_proj's bias where attention_bias adds one)."""
        biased = config.attention_bias
        kept = [m for m in super()._get_name_mappings(config) if biased or not m.source_name.endswith("_proj.bias")]
        added = ("q_norm.weight", "k_norm.weight") + (("o_proj.bias",) if biased else ())
        hf_prefix, prefix = ("model.", cls.base_model_prefix + ".") if kept[0].source_name.startswith("model.") \
            else ("", "")
        kept += [StateDictNameMapping(f"{hf_prefix}layers.{i}.self_attn.{name}", f"{prefix}layers.{i}.self_attn.{name}")
                 for i in range(config.num_hidden_layers) for name in added]
        for index, mapping in enumerate(kept):
            mapping.index = index
        return kept


class Qwen3ForCausalLMPipe(Qwen2ForCausalLMPipe):
    config_class = Qwen3Config

    def __init__(self, config: Qwen3Config):
        with _qwen3_attention():
            super().__init__(config)
        _set_windows(self, config, first=1)  # (layer 0: the embedding)
