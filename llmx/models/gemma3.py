"""Gemma 3, text only (transformers' Gemma3ForCausalLM, model_type gemma3_text), on Gemma 2's pieces
(llmx.models.gemma2).

What Gemma 3 changes: each query and key head is RMS-normalised (q_norm, k_norm: Gemma's 1 + weight norm
over head_dim) before the rotary embedding; sliding layers rotate with their own base
(rope_local_base_freq), full layers with rope_theta and the config's rope_scaling; five sliding layers to
one full one (sliding_window_pattern, or layer_types); no attention soft-capping (transformers 4.55.4
ignores attn_logit_softcapping for Gemma 3) and no final soft-capping unless the config sets it.
"""
from __future__ import annotations

import paddle
from paddle import nn
from paddlenlp.transformers.gemma.modeling import GemmaRMSNorm, GemmaRotaryEmbedding
from paddlenlp.transformers.model_utils import register_base_model

from llmx.models.gemma2 import (SLIDING, Gemma2Attention, Gemma2Config, Gemma2DecoderLayer, Gemma2ForCausalLM,
                                Gemma2Model, Gemma2PretrainedModel)

__all__ = ["Gemma3Config", "Gemma3Model", "Gemma3ForCausalLM"]


class Gemma3Config(Gemma2Config):
    """Gemma2Config with Gemma 3's keys; the defaults are transformers' Gemma3TextConfig's."""

    model_type = "gemma3_text"

    def __init__(self, vocab_size=262208, max_position_embeddings=131072, rope_theta=1_000_000.0,
                 final_logit_softcapping=None, attn_logit_softcapping=None, rope_scaling=None,
                 rope_local_base_freq=10_000.0, sliding_window_pattern=6, **kwargs):
        # (read by Gemma2Config's init without layer_types; `_sliding_window_pattern`: transformers' saved spelling)
        self.sliding_window_pattern = kwargs.pop("_sliding_window_pattern", sliding_window_pattern)
        super().__init__(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                         rope_theta=rope_theta, final_logit_softcapping=final_logit_softcapping,
                         attn_logit_softcapping=attn_logit_softcapping, **kwargs)
        self.rope_scaling = rope_scaling
        self.rope_local_base_freq = rope_local_base_freq
        kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
        if kind not in ("default", "linear"):
            raise ValueError(f"Gemma3Config: rope_scaling type {kind!r} is not supported (linear or none)")


class HeadRMSNorm(GemmaRMSNorm):
    """Gemma's (1 + weight) RMSNorm over each head's head_dim features. Under tensor parallelism each rank
    normalises its own heads with the one shared weight: its gradient is the sum over the ranks (an identity
    whose backward all-reduces, as a column-parallel layer's input)."""

    def __init__(self, config):
        super().__init__(config)
        self.hidden_size = config.head_dim
        self.weight = self.create_parameter([config.head_dim], default_initializer=nn.initializer.Constant(1.0))
        self.tensor_parallel = config.tensor_parallel_degree > 1

    def forward(self, x):
        weight = self.weight
        if self.tensor_parallel:
            from paddle.distributed import fleet

            group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
            weight = paddle.distributed.collective._c_identity(weight, group=group)
        return self._norm(x.astype("float32")).astype(x.dtype) * (weight + 1)


class Gemma3Attention(Gemma2Attention):
    def __init__(self, config, layerwise_recompute: bool = False, layer_idx: int = 0):
        super().__init__(config, layerwise_recompute, layer_idx)
        self.softcap = None  # (see the module's docstring)
        self.q_norm, self.k_norm = HeadRMSNorm(config), HeadRMSNorm(config)
        if config.layer_types[layer_idx] == SLIDING:
            self.rotary_emb = GemmaRotaryEmbedding(self.head_dim, config.max_position_embeddings,
                                                   base=config.rope_local_base_freq)
        elif config.rope_scaling:  # linear: positions divided by the factor
            self.rotary_emb.inv_freq = self.rotary_emb.inv_freq / float(config.rope_scaling["factor"])

    def normalize_heads(self, query, key):
        return self.q_norm(query), self.k_norm(key)


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    attention_class = Gemma3Attention


class Gemma3PretrainedModel(Gemma2PretrainedModel):
    config_class = Gemma3Config
    decoder_layer_class = Gemma3DecoderLayer
    layer_norms = Gemma2PretrainedModel.layer_norms + ("self_attn.q_norm", "self_attn.k_norm")


# (Explicit inits: PaddleNLP's InitTrackerMeta gives Gemma3PretrainedModel an __init__ of its own, PretrainedModel's,
# which would come first.)
@register_base_model
class Gemma3Model(Gemma3PretrainedModel, Gemma2Model):
    def __init__(self, config):
        Gemma2Model.__init__(self, config)


class Gemma3ForCausalLM(Gemma3PretrainedModel, Gemma2ForCausalLM):
    def __init__(self, config):
        Gemma2ForCausalLM.__init__(self, config)
