"""Gemma 2 (transformers' Gemma2ForCausalLM) on PaddleNLP's Gemma (v1) building blocks.

What Gemma 2 adds to Gemma: a norm after attention and around the MLP (four per layer), sliding-window
attention on the layers `layer_types` marks (every other one, from the first), the attention scale
query_pre_attn_scalar**-0.5 instead of head_dim**-0.5, and tanh soft-capping of the attention scores
(attn_logit_softcapping) and of the logits (final_logit_softcapping). Everything else is PaddleNLP's:
the projections with their tensor-parallel split (GemmaAttention's init), the rotary embedding, the (1 +
weight) RMSNorm, the embedding scaled by sqrt(hidden), the mask, cache and recompute handling of
GemmaModel.forward, the head, the criterion, the name maps and split actions.

The window is applied per layer on the additive mask the model hands every layer, by column: a query
sees the keys fewer than `sliding_window` columns before it. Columns are positions wherever llmx runs
the model: a KV cache or a left-padded batch keeps each row's tokens contiguous, and a packed row keeps
each example's tokens contiguous inside its block of the block-diagonal mask.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddlenlp.transformers.conversion_utils import StateDictNameMapping
from paddlenlp.transformers.gemma.configuration import GemmaConfig
from paddlenlp.transformers.gemma.modeling import (GemmaAttention, GemmaDecoderLayer, GemmaForCausalLM, GemmaLMHead,
                                                   GemmaMLP, GemmaModel, GemmaPretrainedModel,
                                                   GemmaPretrainingCriterion, GemmaRMSNorm, apply_rotary_pos_emb,
                                                   get_triangle_upper_mask, repeat_kv)
from paddlenlp.transformers.model_utils import register_base_model

__all__ = ["Gemma2Config", "Gemma2Model", "Gemma2ForCausalLM"]

SLIDING, FULL = "sliding_attention", "full_attention"


class Gemma2Config(GemmaConfig):
    """GemmaConfig with Gemma 2's keys; the defaults are transformers' Gemma2Config's (google/gemma-2-2b)."""

    model_type = "gemma2"
    sliding_window_pattern = 2  # without layer_types, every 2nd layer is full, from the 2nd (transformers')

    def __init__(self, vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                 query_pre_attn_scalar=256, sliding_window=4096, layer_types=None, final_logit_softcapping=30.0,
                 attn_logit_softcapping=50.0, **kwargs):
        kwargs.setdefault("hidden_act", hidden_activation)
        super().__init__(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_key_value_heads, head_dim=head_dim, **kwargs)
        self.hidden_activation = hidden_activation
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.sliding_window = sliding_window
        self.final_logit_softcapping = final_logit_softcapping
        self.attn_logit_softcapping = attn_logit_softcapping
        self.layer_types = list(layer_types) if layer_types else [
            SLIDING if (i + 1) % self.sliding_window_pattern else FULL for i in range(num_hidden_layers)]


def softcap(x, cap):
    """tanh soft-capping to (-cap, cap); None or 0: none."""
    return paddle.tanh(x / cap) * cap if cap else x


def window_mask(mask, window: int):
    """The additive [batch, 1, q, kv] `mask` with the keys `window` or more columns before each query masked
    as well (the queries are the last q columns)."""
    q_len, kv_len = mask.shape[-2], mask.shape[-1]
    queries = paddle.arange(q_len, dtype="int64").unsqueeze(-1) + (kv_len - q_len)
    inside = paddle.arange(kv_len, dtype="int64").unsqueeze(0) > queries - window
    # (where, not a second addition: two large negatives would overflow to -inf, and a row of -inf to NaN)
    return paddle.where(inside, mask, paddle.full_like(mask, paddle.finfo(mask.dtype).min))


class Gemma2MLP(GemmaMLP):
    """GeGLU with the tanh approximation Gemma 2 and 3 are trained with (PaddleNLP's GemmaMLP uses exact gelu)."""

    def __init__(self, config):
        super().__init__(config)
        self.approximate = config.hidden_activation != "gelu"

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate=self.approximate) * self.up_proj(x))


class Gemma2Attention(GemmaAttention):
    """GemmaAttention's projections and rotary embedding; its own scores: query_pre_attn_scalar scale,
    soft-capping, and on sliding layers the window."""

    def __init__(self, config, layerwise_recompute: bool = False, layer_idx: int = 0):
        if config.sequence_parallel:
            raise NotImplementedError(f"{type(self).__name__}: sequence parallelism is not supported")
        super().__init__(config, layerwise_recompute)
        self.sliding_window = config.sliding_window if config.layer_types[layer_idx] == SLIDING else None
        self.scaling = config.query_pre_attn_scalar ** -0.5
        self.softcap = config.attn_logit_softcapping

    def normalize_heads(self, query, key):
        return query, key  # (Gemma 3 normalises each head here)

    def forward(self, hidden_states, position_ids=None, past_key_value=None, attention_mask=None,
                output_attentions=False, use_cache=False, alibi=None):
        shape = [0, 0, -1, self.head_dim]  # [batch, seq, heads, head_dim]
        query, key = (self.q_proj(hidden_states).reshape(shape), self.k_proj(hidden_states).reshape(shape))
        value = self.v_proj(hidden_states).reshape(shape)
        query, key = self.normalize_heads(query, key)
        past = 0 if past_key_value is None else past_key_value[0].shape[1]
        cos, sin = self.rotary_emb(value, seq_len=past + key.shape[1])
        query, key = apply_rotary_pos_emb(query, key, cos, sin, position_ids)
        if past_key_value is not None:
            key = paddle.concat([past_key_value[0], key], axis=1)
            value = paddle.concat([past_key_value[1], value], axis=1)
        present = (key, value) if use_cache else None
        out, weights = self.attend(query, key, value, attention_mask)
        outputs = (self.o_proj(out),) + ((weights,) if output_attentions else ()) + ((present,) if use_cache else ())
        return outputs if len(outputs) > 1 else outputs[0]

    def attend(self, query, key, value, attention_mask):
        if self.kv_indices is not None:  # fewer kv heads than tensor-parallel ranks: this rank's own
            key, value = (paddle.index_select(t, self.kv_indices, axis=2) for t in (key, value))
        key, value = (repeat_kv(t, self.num_heads // t.shape[2]) for t in (key, value))
        query, key, value = (t.transpose([0, 2, 1, 3]) for t in (query, key, value))
        scores = softcap(paddle.matmul(query, key, transpose_y=True) * self.scaling, self.softcap)
        mask = get_triangle_upper_mask(scores) if attention_mask is None else attention_mask
        if self.sliding_window:
            mask = window_mask(mask, self.sliding_window)
        weights = F.softmax(scores + mask, axis=-1, dtype="float32").astype(query.dtype)
        weights = F.dropout(weights, self.attention_dropout, training=self.training)
        out = paddle.matmul(weights, value).transpose([0, 2, 1, 3])
        return out.reshape([0, 0, self.num_heads * self.head_dim]), weights


class Gemma2DecoderLayer(GemmaDecoderLayer):
    """Norms before and after attention and the MLP, each added back to the residual stream after its norm."""

    attention_class = Gemma2Attention

    def __init__(self, config, layerwise_recompute: bool = False, layer_idx: int = 0):
        nn.Layer.__init__(self)  # (GemmaDecoderLayer's init builds Gemma v1's attention and MLP)
        self.config, self.hidden_size = config, config.hidden_size
        self.self_attn = self.attention_class(config, layerwise_recompute, layer_idx)
        self.mlp = Gemma2MLP(config)
        self.input_layernorm, self.post_attention_layernorm = GemmaRMSNorm(config), GemmaRMSNorm(config)
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = GemmaRMSNorm(config), GemmaRMSNorm(config)
        self.sequence_parallel = config.sequence_parallel
        self.enable_recompute, self.layerwise_recompute = False, layerwise_recompute
        self.recompute_granularity = config.recompute_granularity

    def forward(self, hidden_states, position_ids=None, attention_mask=None, output_attentions=False,
                past_key_value=None, use_cache=False, alibi=None):
        outputs = self.self_attn(self.input_layernorm(hidden_states), position_ids, past_key_value, attention_mask,
                                 output_attentions, use_cache, alibi)
        attended, rest = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
        hidden_states = hidden_states + self.post_attention_layernorm(attended)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        hidden_states = hidden_states + self.post_feedforward_layernorm(mlp)
        return (hidden_states, *rest) if rest else hidden_states


class Gemma2LMHead(GemmaLMHead):
    def forward(self, hidden_states, tensor_parallel_output=None):
        # (element-wise: the same on a tensor-parallel rank's slice of the vocabulary)
        return softcap(super().forward(hidden_states, tensor_parallel_output), self.config.final_logit_softcapping)


class Gemma2PretrainedModel(GemmaPretrainedModel):
    config_class = Gemma2Config
    decoder_layer_class = Gemma2DecoderLayer
    layer_norms = ("pre_feedforward_layernorm", "post_feedforward_layernorm")  # beyond Gemma's, per layer

    @classmethod
    def _get_name_mappings(cls, config):
        """Gemma's map and each layer's further norms (replicated under tensor parallelism: no split actions)."""
        mappings = super()._get_name_mappings(config)
        hf, ours = ("model.", "gemma.") if mappings[0].target_name.startswith("gemma.") else ("", "")
        extra = [f"layers.{i}.{norm}.weight" for i in range(config.num_hidden_layers) for norm in cls.layer_norms]
        return mappings + [StateDictNameMapping(hf + name, ours + name, index=len(mappings) + i)
                           for i, name in enumerate(extra)]


@register_base_model
class Gemma2Model(Gemma2PretrainedModel, GemmaModel):
    def __init__(self, config):
        layers = config.num_hidden_layers
        config.num_hidden_layers = 0  # GemmaModel's init builds Gemma v1 layers: ours are built below
        try:
            GemmaModel.__init__(self, config)
        finally:
            config.num_hidden_layers = layers
        self.layers = nn.LayerList([self.decoder_layer_class(config, i not in self.no_recompute_layers, i)
                                    for i in range(layers)])


class Gemma2ForCausalLM(Gemma2PretrainedModel, GemmaForCausalLM):
    lm_head_class = Gemma2LMHead

    def __init__(self, config):
        GemmaPretrainedModel.__init__(self, config)  # (GemmaForCausalLM's init builds Gemma v1's model)
        self.config = config
        self.lm_head = self.lm_head_class(config)
        self.gemma = self.base_model_class(config)
        self.criterion = GemmaPretrainingCriterion(config)
        self.tie_weights()

