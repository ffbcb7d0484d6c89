"""Workarounds for bugs in paddlenlp 3.0.0b4 model families, named by the family table.

Each fix names the upstream problem; delete it (and its name in llmx.families) when the
pinned paddlenlp fixes it. Paddle is imported inside the fixes, so listing them is cheap.
"""
from __future__ import annotations


def mixtral_moe_routing(model=None) -> None:
    """Before build. PaddleNLP's MixtralSparseMoeBlock indexes routing weights with
    `paddle.where(cond)`, whose output became 1-D in paddle 3.x, so every Mixtral forward fails
    ([n, hidden] * [n]). Replace its forward with top-k routing by per-expert token weights."""
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers.mixtral.modeling import MixtralSparseMoeBlock

    def forward(self, hidden_states):
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.reshape([-1, hidden])
        router_logits = self.gate(x)
        probs = F.softmax(router_logits.astype("float32"), axis=-1)
        top_w, top_e = paddle.topk(probs, self.top_k, axis=-1)
        top_w = (top_w / top_w.sum(axis=-1, keepdim=True)).astype(x.dtype)
        out = paddle.zeros_like(x)
        for e, expert in enumerate(self.experts):
            hit = top_e == e  # [tokens, k]
            rows = paddle.nonzero(hit.any(axis=-1)).flatten()
            if rows.shape[0] == 0:
                continue
            weight = (top_w * hit.astype(x.dtype)).sum(axis=-1)  # this expert's weight per token
            y = expert(paddle.gather(x, rows)) * paddle.gather(weight, rows).unsqueeze(-1)
            out = out.index_add(rows, 0, y.astype(x.dtype))
        return out.reshape([batch, seq, hidden]), router_logits

    MixtralSparseMoeBlock.forward = forward


def gemma_tanh_gelu(model=None) -> None:
    """Before build. PaddleNLP's GemmaMLP applies exact gelu (F.gelu) whatever the config says; Gemma was
    trained with the tanh approximation, which transformers uses (gelu_pytorch_tanh): converted Gemma
    checkpoints were off by ~4e-3 in the logits. Use the tanh approximation."""
    import paddle.nn.functional as F
    from paddlenlp.transformers.gemma.modeling import GemmaMLP

    if getattr(GemmaMLP.forward, "llmx_fixed", False):
        return

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))

    forward.llmx_fixed = True
    GemmaMLP.forward = forward


def bloom_zeroed_linears(model=None) -> None:
    """After random init. BLOOM's _init_weights zeroes every Linear weight (it meant the bias),
    leaving a random-init BLOOM with all-zero attention and MLP weights that never train."""
    if model is None:
        return
    import paddle

    std = getattr(model.config, "initializer_range", 0.02)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Linear) and float(layer.weight.abs().max()) == 0.0:
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))


def opt_missing_attributes(model=None) -> None:
    """Before build. OPTForCausalLM.__getattr__ falls back to `config[name]`, which is None for any
    name the config lacks, so `hasattr(model, "no_sync")` holds and PaddleNLP's Trainer calls None
    under gradient accumulation. Fall back to the config only for names it has."""
    from paddle import nn
    from paddlenlp.transformers.opt.modeling import OPTForCausalLM

    def __getattr__(self, name):
        try:
            return nn.Layer.__getattr__(self, name)
        except AttributeError:
            base = nn.Layer.__getattr__(self, self.base_model_prefix)
            if hasattr(base, name):
                return getattr(base, name)
            if hasattr(base.config, name):
                return getattr(base.config, name)
            raise

    OPTForCausalLM.__getattr__ = __getattr__


def qwen_pipeline_attention_mask(model=None) -> None:
    """Before build. QWenForCausalLMPipe's embedding stage calls QWenModel._prepare_decoder_attention_mask,
    which paddlenlp 3.0.0b4's QWenModel lacks (its forward builds the mask inline: get_masks, then 0 or
    the dtype's minimum): give it one that builds the same additive mask."""
    import paddle
    from paddlenlp.transformers.qwen.modeling import QWenModel

    if hasattr(QWenModel, "_prepare_decoder_attention_mask"):
        return

    def prepare(attention_mask, input_shape, past_length, dtype):
        allowed = QWenModel.get_masks(None, input_shape[0], input_shape[1], past_length, padding_mask=attention_mask)
        return paddle.where(allowed, paddle.zeros(allowed.shape, dtype), paddle.full(allowed.shape, paddle.finfo(dtype).min, dtype))

    QWenModel._prepare_decoder_attention_mask = staticmethod(prepare)


def chatglm2_pipeline_position_ids(model=None) -> None:
    """Before build. ChatGLMv2ForCausalLMPipe's stages pass (hidden, mask, position_ids, rotary, ...)
    and drop the Nones, and the next stage reads them back by count: without position_ids the rotary
    table lands in position_ids' place and every block runs without rotary embeddings. Give the
    embedding stage explicit positions (0..s-1, what the single model uses when it has none)."""
    import paddle
    from paddlenlp.transformers.chatglm_v2 import modeling_pp

    forward = modeling_pp.EmbeddingPipe.forward
    if getattr(forward, "llmx_fixed", False):
        return

    def with_positions(self, args):
        input_ids, attention_mask, position_ids, *_ = modeling_pp.parse_args(args)
        if position_ids is None and attention_mask is not None:
            batch, seq = input_ids.shape
            position_ids = paddle.arange(seq, dtype="int64").unsqueeze(0).expand([batch, seq])
            args = (input_ids, attention_mask, position_ids)
        return forward(self, args)

    with_positions.llmx_fixed = True
    modeling_pp.EmbeddingPipe.forward = with_positions


def _mean_over_target_tokens(model_class) -> None:
    """Make `model_class(labels=...)`'s loss the mean over target (non-ignored) tokens. The class computes
    it with paddle's cross_entropy(reduction="mean"), which in paddle 3.3 divides by every position,
    ignored ones included: the loss then depends on prompt lengths and on how much padding a batch
    has, so the same examples cut into other batches train differently."""
    import functools

    import paddle.nn.functional as F

    forward = model_class.forward
    if getattr(forward, "llmx_fixed", False):
        return

    @functools.wraps(forward)  # callers read its parameters (PaddleNLP's prefix model looks for `cache`)
    def fixed(self, *args, labels=None, **kwargs):
        out = forward(self, *args, **kwargs)
        if labels is None:
            return out
        logits = out if not isinstance(out, (tuple, dict)) else (out[0] if isinstance(out, tuple) else out.logits)
        per_token = F.cross_entropy(logits.astype("float32").reshape([-1, logits.shape[-1]]), labels.reshape([-1, 1]),
                                    ignore_index=-100, reduction="none")
        targets = (labels.reshape([-1]) != -100).astype("float32").sum()
        loss = per_token.sum() / targets.clip(min=1.0)
        if isinstance(out, tuple):
            return (loss,) + out
        if isinstance(out, dict):  # a ModelOutput: item and attribute
            out["loss"] = loss
            return out
        return loss, out

    fixed.llmx_fixed = True
    model_class.forward = fixed


def opt_loss_over_target_tokens(model=None) -> None:
    """Before build. See _mean_over_target_tokens (OPTForCausalLM's loss)."""
    from paddlenlp.transformers.opt.modeling import OPTForCausalLM

    _mean_over_target_tokens(OPTForCausalLM)


def yuan_loss_over_target_tokens(model=None) -> None:
    """Before build. See _mean_over_target_tokens (YuanForCausalLM's loss, without use_loss_mask)."""
    from paddlenlp.transformers.yuan.modeling import YuanForCausalLM

    _mean_over_target_tokens(YuanForCausalLM)


BEFORE_BUILD = {"gemma_tanh_gelu", "opt_loss_over_target_tokens", "yuan_loss_over_target_tokens", "mixtral_moe_routing", "opt_missing_attributes", "qwen_pipeline_attention_mask",
                "chatglm2_pipeline_position_ids"}
AFTER_RANDOM_INIT = {"bloom_zeroed_linears"}


def apply(names, phase: set, model=None) -> None:
    """Run the fixes among `names` that belong to `phase` (BEFORE_BUILD or AFTER_RANDOM_INIT)."""
    for name in names:
        if name in phase:
            globals()[name](model)
