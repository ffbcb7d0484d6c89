"""Gemma 3, text only (transformers' Gemma3ForCausalLM, model_type gemma3_text), on Gemma 2's pieces
(llmx.models.gemma2).

What Gemma 3 changes: each query and key head is RMS-normalised (q_norm, k_norm: Gemma's 1 + weight norm
over head_dim) before the rotary embedding; sliding layers rotate with their own base
(rope_local_base_freq), unscaled, full layers with rope_theta and the config's rope_scaling (llmx.engine.rope
scales every layer named rotary_emb: the sliding layers' is named rotary_emb_local, as in transformers); five
sliding layers to one full one (sliding_window_pattern, or layer_types); no attention soft-capping
(transformers 4.55.4 ignores attn_logit_softcapping for Gemma 3) and no final soft-capping unless the config
sets it.
"""
from __future__ import annotations

from paddle import nn
from paddlenlp.transformers.gemma.modeling import GemmaRMSNorm, GemmaRotaryEmbedding
from paddlenlp.transformers.model_utils import register_base_model

from llmx.models import sum_gradient_over_tensor_parallel_ranks
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


class HeadRMSNorm(GemmaRMSNorm):
    """Gemma's (1 + weight) RMSNorm over each head's head_dim features (the one weight shared by every head)."""

    def __init__(self, config):
        super().__init__(config)
        self.hidden_size = config.head_dim
        self.weight = self.create_parameter([config.head_dim], default_initializer=nn.initializer.Constant(1.0))
        if config.tensor_parallel_degree > 1:
            sum_gradient_over_tensor_parallel_ranks(self.weight)


class Gemma3Attention(Gemma2Attention):
    def __init__(self, config, layerwise_recompute: bool = False, layer_idx: int = 0):
        super().__init__(config, layerwise_recompute, layer_idx)
        self.softcap = None  # (see the module's docstring)
        self.q_norm, self.k_norm = HeadRMSNorm(config), HeadRMSNorm(config)
        self.local = config.layer_types[layer_idx] == SLIDING
        if self.local:  # its own base and never scaled: not under the name llmx.engine.rope scales
            del self.rotary_emb
            self.rotary_emb_local = GemmaRotaryEmbedding(self.head_dim, config.max_position_embeddings,
                                                         base=config.rope_local_base_freq)

    def normalize_heads(self, query, key):
        return self.q_norm(query), self.k_norm(key)

    def rotary(self):
        return self.rotary_emb_local if self.local else self.rotary_emb


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
