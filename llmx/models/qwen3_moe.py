"""Qwen3-MoE on PaddleNLP's Qwen2-MoE building blocks (transformers 4.55's Qwen3Moe is the reference).

What differs from Qwen2-MoE: the attention is dense Qwen3's (llmx.models.qwen3.Qwen3Attention: an RMSNorm
over each head of q and k before RoPE, head_dim from the config (Qwen3-30B-A3B: 32 heads of 128 on a 2048
hidden), q/k/v/o biases only with attention_bias, a sliding window with use_sliding_window), no shared expert,
and dense layers where decoder_sparse_step/mlp_only_layers say so. Everything else is Qwen2-MoE's: its
RMSNorm, gated MLP, LM head, criterion, the model's forward and generation code, its name maps and
tensor-parallel split actions. The base model keeps Qwen2-MoE's attribute name `qwen2_moe` so that code serves
unchanged (llmx's tensor names start with it).
Routing is transformers' (llmx.families.moe), shared with Mixtral and Qwen2-MoE.
"""
from __future__ import annotations

import copy
from typing import Optional

import paddle
import paddle.distributed.fleet.meta_parallel as mpu
from paddle import nn
from paddlenlp.transformers.conversion_utils import StateDictNameMapping
from paddlenlp.transformers.model_utils import register_base_model
from paddlenlp.transformers.qwen2_moe import modeling as qwen2_moe
from paddlenlp.transformers.qwen2_moe import modeling_pp as qwen2_moe_pp
from paddlenlp.transformers.qwen2_moe.configuration import Qwen2MoeConfig

from llmx.families import moe
from llmx.models.qwen3 import Qwen3Attention

__all__ = ["Qwen3MoeConfig", "Qwen3MoeModel", "Qwen3MoeForCausalLM", "Qwen3MoeForCausalLMPipe"]


class Qwen3MoeConfig(Qwen2MoeConfig):
    """Qwen2MoeConfig with transformers' Qwen3MoeConfig defaults and keys (head_dim, attention_bias,
    mlp_only_layers); no shared expert."""

    model_type = "qwen3_moe"

    def __init__(self, vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=10000.0,
                 head_dim=None, attention_bias=False, mlp_only_layers=None, moe_intermediate_size=768,
                 num_experts=128, num_experts_per_tok=8, **kwargs):
        kwargs.pop("shared_expert_intermediate_size", None)
        super().__init__(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                         rope_theta=rope_theta, moe_intermediate_size=moe_intermediate_size, num_experts=num_experts,
                         num_experts_per_tok=num_experts_per_tok, shared_expert_intermediate_size=0, **kwargs)
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.attention_bias = attention_bias
        self.mlp_only_layers = list(mlp_only_layers or [])

    def is_sparse(self, layer: int) -> bool:
        """Whether decoder layer `layer` routes over experts (transformers' rule) or is a dense MLP."""
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % self.decoder_sparse_step == 0)

    def window_of(self, layer: int) -> Optional[int]:
        """The sliding window of decoder layer `layer`: transformers' Qwen3-MoE slides on every layer where
        use_sliding_window says so (it has no max_window_layers rule); None where it attends to everything."""
        return self.sliding_window if self.use_sliding_window else None


def _resized(config, **sizes):
    """A copy of `config` with other sizes, for Qwen2-MoE blocks that read their size from the config."""
    other = copy.copy(config)
    for key, value in sizes.items():
        setattr(other, key, value)
    return other


class Qwen3MoeSparseMoeBlock(nn.Layer):
    """Routed experts without Qwen2-MoE's shared expert; returns (output, router_logits)."""

    def __init__(self, config: Qwen3MoeConfig):
        super().__init__()
        moe.add_router_and_experts(self, config, lambda: qwen2_moe.Qwen2MoeMLP(config))

    def forward(self, hidden_states):
        return moe.routed_experts(self, hidden_states, self.norm_topk_prob)


class Qwen3MoeDecoderLayer(qwen2_moe.Qwen2MoeDecoderLayer):
    """Qwen2-MoE's decoder layer (its forward) over Qwen3-MoE's attention and a routed or dense MLP."""

    def __init__(self, config: Qwen3MoeConfig, layerwise_recompute: bool = False, layer_idx: int = 0):
        nn.Layer.__init__(self)
        self.config = config
        self.self_attn = Qwen3Attention(config, layerwise_recompute)
        self.self_attn.sliding_window = config.window_of(layer_idx)
        self.mlp = Qwen3MoeSparseMoeBlock(config) if config.is_sparse(layer_idx) else \
            qwen2_moe.Qwen2MoeMLP(_resized(config, moe_intermediate_size=config.intermediate_size))
        self.input_layernorm = qwen2_moe.Qwen2MoeRMSNorm(config)
        self.post_attention_layernorm = qwen2_moe.Qwen2MoeRMSNorm(config)
        self.sequence_parallel = config.sequence_parallel
        self.enable_recompute = False  # (the Trainer turns recompute on)
        self.layerwise_recompute = layerwise_recompute
        self.recompute_granularity = config.recompute_granularity


class Qwen3MoePretrainedModel(qwen2_moe.Qwen2MoePretrainedModel):
    config_class = Qwen3MoeConfig
    base_model_prefix = "qwen2_moe"

    @classmethod
    def _get_name_mappings(cls, config: Qwen3MoeConfig) -> list:
        """Qwen2-MoE's map, less what Qwen3-MoE lacks (shared experts, biases without attention_bias, the
        experts of dense layers), plus q_norm/k_norm, o_proj's bias and the dense layers' MLPs."""
        dense = [i for i in range(config.num_hidden_layers) if not config.is_sparse(i)]
        dropped = ("shared_expert", "rotary_emb") + (() if config.attention_bias else ("_proj.bias",))
        kept = [m for m in super()._get_name_mappings(config) if not any(d in m.source_name for d in dropped)
                and not any(f"layers.{i}.mlp.experts." in m.source_name or m.source_name.endswith(
                    f"layers.{i}.mlp.gate.weight") for i in dense)]
        added = []
        for i in range(config.num_hidden_layers):
            added += [(f"layers.{i}.self_attn.{n}_norm.weight", None) for n in "qk"]
            if config.attention_bias:
                added.append((f"layers.{i}.self_attn.o_proj.bias", None))
        for i in dense:
            added += [(f"layers.{i}.mlp.{p}.weight", "transpose") for p in ("gate_proj", "up_proj", "down_proj")]
        start = len(kept)
        kept += [StateDictNameMapping("model." + name, "qwen2_moe." + name, action, index=start + j)
                 for j, (name, action) in enumerate(added)]
        return kept

    @classmethod
    def _get_tensor_parallel_mappings(cls, config: Qwen3MoeConfig, is_split=True):
        """Qwen2-MoE's split actions for the tensors this model has, and the dense layers' MLPs (column, row)."""
        actions = super()._get_tensor_parallel_mappings(config, is_split)
        whole = _resized(config, architectures=["Qwen3MoeForCausalLM"])  # (a random init's config names none)
        names = {m.target_name.split("qwen2_moe.", 1)[-1] for m in cls._get_name_mappings(whole)}
        kept = {k: v for k, v in actions.items() if k in names}
        for i in range(config.num_hidden_layers):
            if not config.is_sparse(i):
                for proj in ("gate_proj", "up_proj", "down_proj"):  # split as an expert's are
                    kept[f"layers.{i}.mlp.{proj}.weight"] = actions[f"layers.0.mlp.experts.0.{proj}.weight"]
        return kept


@register_base_model
class Qwen3MoeModel(Qwen3MoePretrainedModel, qwen2_moe.Qwen2MoeModel):
    """Qwen2MoeModel (its forward) over Qwen3-MoE decoder layers."""

    def __init__(self, config: Qwen3MoeConfig):
        Qwen3MoePretrainedModel.__init__(self, config)
        self.padding_idx, self.vocab_size, self.hidden_size = config.pad_token_id, config.vocab_size, config.hidden_size
        self.sequence_parallel = config.sequence_parallel
        self.recompute_granularity = config.recompute_granularity
        self.no_recompute_layers = config.no_recompute_layers or []
        self.enable_recompute = False
        self.embed_tokens = _embedding(config)
        self.layers = nn.LayerList([Qwen3MoeDecoderLayer(config, i not in self.no_recompute_layers, i)
                                    for i in range(config.num_hidden_layers)])
        self.norm = qwen2_moe.Qwen2MoeRMSNorm(config)


def _embedding(config):
    """A vocab-parallel embedding where tensor parallelism splits the vocabulary, as Qwen2-MoE's."""
    if config.tensor_parallel_degree > 1 and config.vocab_size % config.tensor_parallel_degree == 0:
        return mpu.VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                          weight_attr=paddle.ParamAttr(initializer=nn.initializer.XavierNormal()))
    return nn.Embedding(config.vocab_size, config.hidden_size)


class Qwen3MoeForCausalLM(Qwen3MoePretrainedModel, qwen2_moe.Qwen2MoeForCausalLM):
    """Qwen2MoeForCausalLM (forward, generation, auxiliary loss) over Qwen3MoeModel."""

    def __init__(self, config: Qwen3MoeConfig):
        Qwen3MoePretrainedModel.__init__(self, config)
        self.qwen2_moe = Qwen3MoeModel(config)
        self.lm_head = qwen2_moe.Qwen2MoeLMHead(config)
        self.criterion = qwen2_moe.Qwen2MoePretrainingCriterion(config)
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.num_experts = config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok


moe.router_aux_loss_logged(Qwen3MoeForCausalLM)


class Qwen3MoeDecoderLayerPipe(qwen2_moe_pp.Qwen2MoeDecoderLayerPipe, Qwen3MoeDecoderLayer):
    """Qwen2-MoE's pipeline stage forward over a Qwen3-MoE decoder layer."""


class Qwen3MoeForCausalLMPipe(qwen2_moe_pp.Qwen2MoeForCausalLMPipe):
    """Qwen2-MoE's pipeline (embedding, decoder layers, norm, LM head: its stage layers and input split) over
    Qwen3-MoE decoder layers; its own LM head, as the single model (no tied embeddings)."""

    config_class = Qwen3MoeConfig
    _get_tensor_parallel_mappings = Qwen3MoePretrainedModel._get_tensor_parallel_mappings

    def __init__(self, config: Qwen3MoeConfig):
        from paddle.distributed import fleet
        from paddle.distributed.fleet.meta_parallel import LayerDesc, PipelineLayer

        self.config = config
        self.enable_recompute = False  # (the Trainer turns recompute on)
        self.recompute_granularity = config.recompute_granularity
        self.pp_recompute_interval = config.pp_recompute_interval
        self.no_recompute_layers = config.no_recompute_layers or []
        hcg = fleet.get_hybrid_communicate_group()
        config.tensor_parallel_degree = max(hcg.get_model_parallel_world_size(), 1)
        config.tensor_parallel_rank = max(hcg.get_model_parallel_rank(), 0)
        self.add_sequential_layer(LayerDesc(qwen2_moe_pp.Qwen2MoeEmbeddingPipe, config=config), "qwen2_moe")
        for i in range(config.num_hidden_layers):
            self.add_sequential_layer(LayerDesc(Qwen3MoeDecoderLayerPipe, config=config, layer_idx=i,
                                                layerwise_recompute=i not in self.no_recompute_layers),
                                      f"qwen2_moe.layers.{i}")
        self.add_sequential_layer(LayerDesc(qwen2_moe_pp.Qwen2MoeRMSNormPipe, config=config), "qwen2_moe")
        self.add_sequential_layer(LayerDesc(qwen2_moe_pp.Qwen2MoeLMHeadPipe, config=config), "lm_head")
        stages = hcg.topology().get_dim_size("pipe")
        PipelineLayer.__init__(
            self, layers=self.get_sequential_layers(), loss_fn=self.get_loss_fn(config), topology=hcg.topology(),
            seg_method="layer:Qwen3MoeDecoderLayer" if config.num_hidden_layers % stages == 0 else "uniform",
            recompute_interval=0,  # (as Qwen2-MoE's: recompute is off when the pipeline is built)
            recompute_ctx={"mp_group": hcg.get_model_parallel_group(), "offload": False, "partition": False},
            num_virtual_pipeline_stages=getattr(config, "virtual_pp_degree", 1))
        self.apply(self._init_weights)
