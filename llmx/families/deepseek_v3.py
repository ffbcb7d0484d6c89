"""DeepSeek-V3 (PaddleNLP's DeepseekV3ForCausalLM, built on its DeepSeek-V2 layers): multi-head latent
attention (queries through a q_lora_rank bottleneck, or straight as in V2-Lite; keys and values from one
kv_lora_rank latent, a separate RoPE part of qk_rope_head_dim per head), `first_k_dense_replace` leading
dense layers, then mixture-of-experts layers: `n_routed_experts` routed experts (top `num_experts_per_tok`
of them per token, chosen within the best `topk_group` of `n_group` groups) beside `n_shared_experts`
always-on ones.

Routing follows the config as PaddleNLP reads it: V3's `noaux_tc` (sigmoid scores; experts chosen on scores
plus `e_score_correction_bias`, a group ranked by its two best; weights the chosen experts' plain scores,
normalised if `norm_topk_prob`, times `routed_scaling_factor`), V2's `group_limited_greedy` (a group ranked
by its best) and `greedy`. V3 balances its experts without an auxiliary loss ("aux-loss-free"): no router
loss is added or logged. Its balancing step, nudging `e_score_correction_bias` against each expert's load
after every step, is not done (PaddleNLP 3.0.0b4 has none): the bias stays as loaded (zero at random init)
and is not trained by gradient. The multi-token-prediction module (`num_nextn_predict_layers`) is left out
of every size: PaddleNLP's forward then drops the last input token from the main model.
"""
from __future__ import annotations

from typing import Any, Dict

from llmx.families.fixes import after_random_init, before_build
from llmx.families.moe import mix_experts
from llmx.families.record import Family, Params

# LoRA: MLA's projections (q_proj without a q_lora_rank, else q_a_proj and q_b_proj; the kv latent's in and
# out), o_proj, and the gated MLPs (dense, routed and shared experts). The router stays frozen.
LORA = (".*q_proj.*", ".*q_a_proj.*", ".*q_b_proj.*", ".*kv_a_proj_with_mqa.*", ".*kv_b_proj.*", ".*o_proj.*",
        ".*gate_proj.*", ".*up_proj.*", ".*down_proj.*")


def _attention(hp: Dict[str, Any]) -> int:
    h, heads, bias = hp["hidden_size"], hp["num_attention_heads"], bool(hp.get("attention_bias"))
    q_rank, kv_rank = hp.get("q_lora_rank"), hp["kv_lora_rank"]
    rope, nope, v = hp["qk_rope_head_dim"], hp["qk_nope_head_dim"], hp["v_head_dim"]
    q_out = heads * (nope + rope)
    if q_rank is None:
        q = h * q_out
    else:  # q_a_proj (bias with attention_bias), its RMSNorm, q_b_proj
        q = h * q_rank + q_rank * bias + q_rank + q_rank * q_out
    kv = h * (kv_rank + rope) + (kv_rank + rope) * bias + kv_rank + kv_rank * heads * (nope + v)
    return q + kv + heads * v * h + h * bias  # o_proj


def count_params(hp: Dict[str, Any]) -> Params:
    """Decoder layers are dense (a gated MLP of intermediate_size) or mixtures of experts (n_routed_experts
    gated MLPs of moe_intermediate_size, a router [hidden, experts] with, for noaux_tc, its correction bias,
    and one shared gated MLP of n_shared_experts x moe_intermediate_size); the head is always its own."""
    h, V, layers = hp["hidden_size"], hp["vocab_size"], hp["num_hidden_layers"]
    common = _attention(hp) + 2 * h  # and two RMSNorms
    dense = common + 3 * h * hp["intermediate_size"]
    experts = hp.get("n_routed_experts")
    moe_at = [i for i in range(layers) if experts is not None and i >= hp["first_k_dense_replace"]
              and i % hp["moe_layer_freq"] == 0]
    if not moe_at:
        return Params(dense, layers, embed=V * h, head=h + V * h)
    expert = 3 * h * hp["moe_intermediate_size"]
    router = h * experts + (experts if hp["topk_method"] == "noaux_tc" else 0)
    shared = expert * hp["n_shared_experts"] if hp.get("n_shared_experts") else 0
    moe = common + experts * expert + router + shared
    active = common + hp["num_experts_per_tok"] * expert + router + shared
    return Params(moe, len(moe_at), embed=V * h, head=h + V * h, active_layer=active,
                  other_layers=(layers - len(moe_at)) * dense)


# ------------------------------------------------------------------------------------------ fixes
@before_build
def deepseek_rotary_tables(model=None) -> None:
    """PaddleNLP's DeepseekV2RotaryEmbedding (and its linear-scaling subclass) keeps cos/sin as
    [1, seq, 1, dim], which the attention indexes as if they were [seq, dim] (as only the YaRN subclass keeps
    them): every forward without YaRN scaling fails in a concat of [b, s, h, d] with a 6-D tensor
    (paddlenlp 3.0.0b4). Hand the attention [seq, dim] tables. Can go when a DeepseekV3ForCausalLM without
    rope_scaling runs a forward."""
    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2RotaryEmbedding

    def forward(self, x, seq_len=None):
        if self.max_seq_len_cached is None or seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len)
        return tuple(t.reshape([-1, t.shape[-1]])[:seq_len].astype(x.dtype) for t in (self.cos_cached, self.sin_cached))

    DeepseekV2RotaryEmbedding.forward = forward


@before_build
def deepseek_rope_scaling_types(model=None) -> None:
    """PaddleNLP's DeepseekV2Attention picks its rotary class by rope_scaling["type"] alone: a scaling spelled
    rope_type (transformers' spelling) fails with KeyError 'type', llama3 with "Unknown RoPE scaling type",
    {rope_type: default} (no scaling) with KeyError too, and the dynamic NTK class fails past the context (no
    attribute 'axis'; paddlenlp 3.0.0b4). With a scaling, build the plain rotary layer: llmx.engine.rope hands
    out llmx's tables of the scaling through it (as transformers computes them, YaRN's attention factor
    included), while the attention keeps upstream's softmax scale, which is transformers' (times
    yarn_mscale(factor, mscale_all_dim) squared when the scaling has mscale_all_dim). Can go when a scaling of
    every type, spelled rope_type, builds and runs past the context, and {rope_type: default} builds."""
    import functools

    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2Attention, DeepseekV2RotaryEmbedding

    from llmx import rope

    init_rope = DeepseekV2Attention._init_rope
    if getattr(init_rope, "llmx_fixed", False):
        return

    @functools.wraps(init_rope)
    def fixed(self):
        if rope.scaling_type(self.config.rope_scaling) is None:
            # {rope_type: default} is none: the softmax scale upstream computes next would read it as one
            self.config.rope_scaling = None
            return init_rope(self)
        self.rotary_emb = DeepseekV2RotaryEmbedding(self.qk_rope_head_dim, self.max_position_embeddings,
                                                    base=self.rope_theta)

    fixed.llmx_fixed = True
    DeepseekV2Attention._init_rope = fixed

def route(gate, x):
    """(experts [tokens, k], weights [tokens, k] float32) of tokens `x` [tokens, hidden] by PaddleNLP's MoEGate
    `gate` (its config's scoring_func, topk_method, n_group/topk_group, norm_topk_prob, routed_scaling_factor),
    as transformers' DeepseekV3TopkRouter does for noaux_tc."""
    import paddle
    import paddle.nn.functional as F

    tokens = x.shape[0]
    scores = gate.gate_score_func(F.linear(x.astype("float32"), gate.weight.astype("float32")))
    choice = scores.detach()
    if gate.topk_method == "noaux_tc":
        choice = choice + gate.e_score_correction_bias.astype("float32").unsqueeze(0)
    if gate.topk_method in ("noaux_tc", "group_limited_greedy"):  # only the best topk_group groups compete
        grouped = choice.reshape([tokens, gate.n_group, -1])
        group_score = grouped.topk(2, axis=-1)[0].sum(-1) if gate.topk_method == "noaux_tc" else grouped.max(-1)
        best = paddle.topk(group_score, gate.topk_group, axis=-1)[1]
        kept = F.one_hot(best, gate.n_group).sum(1).unsqueeze(-1).expand(grouped.shape).reshape(choice.shape)
        choice = choice * kept
    top_experts = paddle.topk(choice, gate.top_k, axis=-1)[1]
    top_weights = paddle.take_along_axis(scores, top_experts, axis=-1)
    if gate.norm_topk_prob:
        top_weights = top_weights / (top_weights.sum(-1, keepdim=True) + 1e-20)
    return top_experts, top_weights * gate.routed_scaling_factor


@before_build
def deepseek_moe_routing(model=None) -> None:
    """PaddleNLP's DeepseekV2MoE (V3's too) dispatches through MoELayer's capacity priorities, which fail on
    paddle 3.3 (int64 cumsum times an int32 mask: TypeError); and its gate trains on other weights than it
    infers with (for noaux_tc: the bias-corrected scores, without routed_scaling_factor). Route with `route`
    (in training as in inference), mix the experts per token, add the shared experts; keep the router's
    correction bias out of the gradient (a buffer in transformers). Can go when a DeepseekV3ForCausalLM MoE
    forward runs on the pinned paddle and weighs as transformers' DeepseekV3MoE."""
    import functools

    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2MoE

    init = DeepseekV2MoE.__init__
    if getattr(init, "llmx_fixed", False):
        return

    @functools.wraps(init)
    def fixed_init(self, config, *args, **kwargs):
        init(self, config, *args, **kwargs)
        bias = getattr(self.gate, "e_score_correction_bias", None)
        if bias is not None:  # before any optimizer lists it
            bias.stop_gradient = True

    def forward(self, hidden_states):
        x = hidden_states.reshape([-1, hidden_states.shape[-1]])
        out = mix_experts(x, self.experts, *route(self.gate, x)).reshape(hidden_states.shape)
        if self.config.n_shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        return out

    fixed_init.llmx_fixed = True
    DeepseekV2MoE.__init__ = fixed_init
    DeepseekV2MoE.forward = forward


@before_build
def deepseek_generation_inputs(model=None) -> None:
    """PaddleNLP's DeepseekV3ForCausalLM has no prepare_inputs_for_generation, so `generate` gives it the
    ids alone each step: no attention mask (a left-padded prompt attends to its pads), no positions, no
    cache. Give it Llama's, which passes the mask, positions and cache on. Can go when the class has one."""
    from paddlenlp.transformers import DeepseekV3ForCausalLM, LlamaForCausalLM

    DeepseekV3ForCausalLM.prepare_inputs_for_generation = LlamaForCausalLM.prepare_inputs_for_generation


@before_build
def deepseek_pad_embedding(model=None) -> None:
    """PaddleNLP's DeepseekV2Model builds its embedding with padding_idx=pad_token_id, and paddle's embedding
    returns zeros for that id whatever its row holds (torch's does not, nor PaddleNLP's own pipeline
    embedding): a pad id the model reads as a token (a generated one, or eos standing in for pad) reads as
    nothing (paddlenlp 3.0.0b4). Read the pad row like any other. Can go when upstream drops the padding_idx."""
    import functools

    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2Model

    init = DeepseekV2Model.__init__
    if getattr(init, "llmx_fixed", False):
        return

    @functools.wraps(init)
    def fixed(self, config, *args, **kwargs):
        init(self, config, *args, **kwargs)
        if hasattr(self.embed_tokens, "_padding_idx"):
            self.embed_tokens._padding_idx = None

    fixed.llmx_fixed = True
    DeepseekV2Model.__init__ = fixed


@before_build
def deepseek_tensor_parallel_rope_key(model=None) -> None:
    """Under tensor parallelism each rank attends with its own heads, and all heads read the one RoPE key
    (k_pe) of kv_a_proj_with_mqa, which is not split; PaddleNLP hands it to the heads without summing the
    ranks' gradients, so that projection trains on its own rank's heads' share (paddlenlp 3.0.0b4: tp2 drifts
    from one process from the second step). Pass k_pe through the model-parallel identity, whose backward
    sums them, as the column-parallel projections do with their inputs. Can go when tp2 trains as one
    process without it."""
    import functools

    import paddle
    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2Attention

    init = DeepseekV2Attention.__init__
    if getattr(init, "llmx_fixed", False):
        return

    def sum_rope_key_gradients(layer, inputs, output):
        from paddle.distributed import fleet
        from paddle.distributed.fleet.layers.mpu import mp_ops  # (looked up now: llmx.compat replaces it on CPU)

        latent, rope = paddle.split(output, [output.shape[-1] - layer.llmx_rope_dim, layer.llmx_rope_dim], axis=-1)
        group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
        return paddle.concat([latent, mp_ops._c_identity(rope, group=group)], axis=-1)

    @functools.wraps(init)
    def fixed(self, config, *args, **kwargs):
        init(self, config, *args, **kwargs)
        if config.tensor_parallel_degree > 1:
            self.kv_a_proj_with_mqa.llmx_rope_dim = config.qk_rope_head_dim
            self.kv_a_proj_with_mqa.register_forward_post_hook(sum_rope_key_gradients)

    fixed.llmx_fixed = True
    DeepseekV2Attention.__init__ = fixed


@after_random_init
def deepseek_router_init(model) -> None:
    """PaddleNLP's DeepseekV2PretrainedModel._init_weights returns at once, so a random model's routers keep
    their constant 1.0 weights: every expert scores alike for every token (paddlenlp 3.0.0b4). Draw them
    as transformers does, normal(0, initializer_range). Can go when a random model's router weights differ."""
    import paddle
    from paddlenlp.transformers.deepseek_v2.modeling import MoEGate

    for layer in model.sublayers():
        if isinstance(layer, MoEGate):
            layer.weight.set_value(paddle.normal(0.0, model.config.initializer_range, layer.weight.shape)
                                   .astype(layer.weight.dtype))


# DeepseekV3Config's own defaults (it inherits DeepSeek-V2's), for the keys the formula reads.
DEFAULTS = dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, moe_intermediate_size=1407,
                num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=None,
                n_routed_experts=None, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                qk_nope_head_dim=128, topk_method="gready", num_experts_per_tok=None, moe_layer_freq=1,
                first_k_dense_replace=0, attention_bias=False, tie_word_embeddings=False)

def routing_from_hf(hf: Dict[str, Any]) -> Dict[str, Any]:
    """transformers' DeepseekV3 routes as noaux_tc on sigmoid scores and has no keys saying so; PaddleNLP's
    config would fall back to V2's softmax greedy routing."""
    implied = {"topk_method": "noaux_tc", "scoring_func": "sigmoid"}
    return {k: v for k, v in implied.items() if k not in hf}


FAMILY = Family(
    "deepseek_v3", "DeepseekV3ForCausalLM", "DeepseekV3Config", LORA, pipeline_class="DeepseekV3ForCausalLMPipe",
    no_static="paddle.jit.to_static (paddle 3.3.1) fails in PaddleNLP's DeepSeek model code (a Python `if` on a "
              "tensor value, which it cannot trace); use stage.mode=dynamic",
    no_prefix="multi-head latent attention caches keys and values of different head sizes (qk_nope_head_dim + "
              "qk_rope_head_dim, v_head_dim); PaddleNLP's prefix encoder makes one",
    defaults=DEFAULTS, count_params=count_params,
    rope_layout="seq_dim",  # the attention adds the batch and head dims itself (see deepseek_rotary_tables)
    fixes=(deepseek_rotary_tables, deepseek_rope_scaling_types, deepseek_moe_routing, deepseek_generation_inputs,
           deepseek_pad_embedding, deepseek_tensor_parallel_rope_key, deepseek_router_init),
    hf_model_type="deepseek_v3", hf_architecture="DeepseekV3ForCausalLM",
    # transformers' DeepseekV3 routes by sigmoid scores with noaux_tc whatever config.json says (it has no
    # such keys); PaddleNLP's config defaults to DeepSeek-V2's softmax greedy routing.
    hf_config_in=routing_from_hf)
