"""Switching PaddleNLP's model families to llmx's fused ops: the one place that does it.

Not an upstream patch (those live in llmx.compat, each with the version it works around): this
swaps llmx's own kernels into the layers they compute exactly, wherever PaddleNLP works as meant.

PaddleNLP 3.0.0b4's own fused flags (use_fused_rms_norm, use_fused_rope, fuse_attention_ffn's
swiglu) call GPU kernels, so on CPU llmx replaces layers itself, by behaviour rather than by name:
- every `*RMSNorm` layer with a 1-D weight and an epsilon gets a forward through llmx.ops.rms_norm;
- every MLP with gate_proj / up_proj / down_proj gets down_proj(llmx.ops.swiglu(gate, up));
- a family module's `apply_rotary_pos_emb(q, k, cos, sin, position_ids)` (Llama's form) is wrapped
  to gather cos/sin by position and call llmx.ops.rope.
Each candidate is first run both ways on a random input and switched only when the results agree
(1e-5): a family whose layer differs (Gemma's RMSNorm scales by 1 + weight, its MLP uses GELU;
ChatGLM2's rotary embedding is interleaved; LayerNorm/GELU families have nothing to match) keeps
PaddleNLP's layer, and enable() reports only the ops it switched.
- an attention layer's `attn_func` (PaddleNLP's eager `scaled_dot_product_attention`: Llama,
  Baichuan, Qwen2) is wrapped: when its additive mask is block-diagonal causal (packed rows, or plain
  causal rows without padding) the segments are read off the mask and llmx.ops.packed_attention
  computes only the blocks inside each example; any other mask (padding, prefixes, a cache) goes to
  PaddleNLP's function as before. The layer hands grouped key/value heads (GQA) to it untiled.
- a pre-norm decoder layer (input_layernorm, self_attn, post_attention_layernorm, mlp: Llama's
  form, in Llama, Baichuan, Qwen2, Mistral, Yuan) whose post-attention norm was switched above gets a
  forward that joins the attention's residual add and that norm in llmx.ops.add_rms_norm (one pass
  over the hidden states forward, the residual's gradient added in the norm's backward); the layer's
  own forward runs whenever it would do more (a KV cache, attention weights, recompute of the
  attention alone, another dtype). The add after the MLP stays: fusing it with the next layer's
  input norm would mean replacing the model's own loop over layers.
- a causal LM whose loss is `self.criterion(self.lm_head(hidden), labels)` (Llama's form) gets a
  forward that, given labels in training mode, runs the family's own forward with lm_head passing the
  hidden states through and the criterion replaced by llmx.ops.fused_linear_cross_entropy over
  lm_head's weight (tied or not): the [tokens, vocab] logits never exist, and the output's logits
  are None (as with PaddleNLP's own use_fused_linear_cross_entropy, a Triton kernel for GPUs). The
  Trainer's training step and the ptx loss read only the loss; in eval mode (metrics want the
  logits) and without labels (generation, DPO/KTO/RM, RL log-probs) the family's forward runs
  untouched. Checked on a random batch: a
  family whose forward does anything else with the logits (soft-capping, its own loss, an
  lm_head with a bias, LoRA on lm_head) keeps its own path.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys

import numpy as np
import paddle

import llmx.ops as ops

log = logging.getLogger(__name__)
_EPS_NAMES = ("variance_epsilon", "epsilon", "eps")
_probing = {"on": False}  # _switch_cross_entropy's probe runs the fused loss in eval mode


def _agree(a, b) -> bool:
    """Same up to float32 rounding, relative to each output's scale: with a real checkpoint's weights a
    probe's outputs reach ~1e3 while some elements are sums that cancel to near 0, where two summation
    orders differ by ~1e-4 (SmolLM2's MLP: SwiGLU stayed unswitched under a plain 1e-5 atol)."""
    a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
    return len(a) == len(b) and all(
        np.allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(y.numpy()).max())))
        for x, y in zip(a, b))


def _probe(shape, dtype):
    return paddle.to_tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype))


def _eps(layer):
    for name in _EPS_NAMES:
        if isinstance(getattr(layer, name, None), float):
            return getattr(layer, name)
    return None


def _switch_rms_norm(layer) -> bool:
    weight, eps = getattr(layer, "weight", None), _eps(layer)
    if weight is None or eps is None or len(weight.shape) != 1 or weight.dtype not in (paddle.float32, paddle.float64):
        return False
    original = layer.forward
    fused = lambda x: ops.rms_norm(x, layer.weight, eps)  # noqa: E731
    fused.llmx_original = original
    x = _probe([3, weight.shape[0]], "float32" if weight.dtype == paddle.float32 else "float64")
    with paddle.no_grad():
        try:
            if not _agree(original(x), fused(x)):
                return False
        except Exception:  # noqa: BLE001 - a layer of another shape of forward: not a match
            return False
    layer.forward = fused
    return True


def _switch_mlp(layer) -> bool:
    parts = [getattr(layer, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, paddle.nn.Linear) for p in parts):
        return False
    original = layer.forward

    def fused(x):
        return layer.down_proj(ops.swiglu(layer.gate_proj(x), layer.up_proj(x)))

    fused.llmx_original = original

    x = _probe([2, 3, parts[0].weight.shape[0]], "float32" if parts[0].weight.dtype == paddle.float32 else "float64")
    with paddle.no_grad():
        try:
            if not _agree(original(x), fused(x)):
                return False
        except Exception:  # noqa: BLE001
            return False
    layer.forward = fused
    return True


def _rope_wrapper(original):
    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, *args, **kwargs):
        if args or kwargs or ops.kernels() is None or q.dtype not in (paddle.float32, paddle.float64):
            return original(q, k, cos, sin, position_ids, *args, **kwargs)
        if position_ids is None:  # cos/sin [1, seq >= s, 1, d]
            c, s = cos[:, :q.shape[1], 0, :], sin[:, :q.shape[1], 0, :]
        else:  # [1, seq, 1, d] gathered by position: [b, s, d]
            c, s = cos.squeeze(axis=[0, 2])[position_ids], sin.squeeze(axis=[0, 2])[position_ids]
        return ops.rope(q, k, c, s)

    apply_rotary_pos_emb.llmx_original = original
    return apply_rotary_pos_emb


def _switch_rope(module) -> bool:
    """Wraps `module.apply_rotary_pos_emb` once per module (the wrapper calls the original whenever
    the kernels are off), after checking the two agree with and without position ids."""
    fn = getattr(module, "apply_rotary_pos_emb", None)
    if fn is None:
        return False
    if getattr(fn, "llmx_original", None) is not None:
        return True
    wrapped = _rope_wrapper(fn)
    b, s, h, d = 2, 5, 3, 8
    q, k = _probe([b, s, h, d], "float32"), _probe([b, s, 1, d], "float32") * 0.5
    angle = _probe([1, s, 1, d], "float32")
    pos = paddle.to_tensor(np.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]], dtype="int64"))
    with paddle.no_grad():
        try:
            for p in (pos, None):
                if not _agree(fn(q, k, angle.cos(), angle.sin(), p), wrapped(q, k, angle.cos(), angle.sin(), p)):
                    return False
        except Exception:  # noqa: BLE001 - another signature or layout: not a match
            return False
    module.apply_rotary_pos_emb = wrapped
    return True


def _segments(mask):
    """Segment ids [b, s] when the mask ([b, 1, s, s], bool or additive) is block-diagonal causal, else None.
    Kept on the mask: every layer of a forward gets the same mask tensor (reading it took 2% of a step)."""
    if mask is None or len(mask.shape) != 4 or mask.shape[1] != 1 or mask.shape[2] != mask.shape[3]:
        return None
    cached = getattr(mask, "_llmx_segments", _UNREAD)
    if cached is _UNREAD:
        cached = _read_segments(mask)
        mask._llmx_segments = cached
    return cached


_UNREAD = object()


def _read_segments(mask):
    allowed = mask[:, 0] if mask.dtype == paddle.bool else mask[:, 0] > -1.0  # additive: 0 or a large negative
    s = allowed.shape[-1]
    if s < 2:
        return paddle.zeros([allowed.shape[0], s], dtype="int64")
    # a new segment starts at i where i may not see i - 1
    sees_prev = paddle.diagonal(allowed, offset=-1, axis1=1, axis2=2)  # [b, s - 1]
    start = paddle.concat([paddle.ones([allowed.shape[0], 1], dtype="int64"), (~sees_prev).astype("int64")], axis=1)
    seg = paddle.cumsum(start, axis=1)
    expected = (seg.unsqueeze(2) == seg.unsqueeze(1)) & paddle.tril(paddle.ones([s, s], dtype="bool"))
    return seg if bool((expected == allowed).all()) else None


def _attention_wrapper(original):
    sig = inspect.signature(original)  # the families' versions differ in their later parameters

    def attn_func(*args, **kwargs):
        p = sig.bind(*args, **kwargs).arguments
        q, k, config = p["query_states"], p["key_states"], p["config"]
        plain = (ops.kernels() is not None and not p.get("output_attentions") and p.get("alibi") is None
                 and p.get("attn_mask_startend_row_indices") is None and not p.get("sequence_parallel")
                 and p.get("reshard_layer") is None and not getattr(config, "use_flash_attention", False)
                 and not (p.get("training") and getattr(config, "attention_dropout", 0.0))
                 and q.dtype == paddle.float32 and q.shape[1] == k.shape[1])
        seg = _segments(p.get("attention_mask")) if plain else None
        if seg is None:
            if k.shape[2] != q.shape[2]:  # left grouped by _grouped_kv_forward: the function wants every head
                bound = sig.bind(*args, **kwargs)
                n = q.shape[2] // k.shape[2]
                bound.arguments["key_states"] = paddle.repeat_interleave(k, n, axis=2)
                bound.arguments["value_states"] = paddle.repeat_interleave(p["value_states"], n, axis=2)
                return original(*bound.args, **bound.kwargs)
            return original(*args, **kwargs)
        b, s, h, d = q.shape
        return ops.packed_attention(q, k, p["value_states"], seg).reshape([b, s, h * d])

    attn_func.llmx_original = original
    return attn_func


# >0 while a switched attention layer runs its forward: its module's repeat_kv then leaves the key/value heads
# grouped, since the packed attention reads grouped heads itself (tiling 3 heads to 9 and its gradient took 3% of
# a step of the real checkpoint), and attn_func repeats them where it hands over to PaddleNLP's function.
_grouped = {"depth": 0}
_grouped_modules = []  # the family modules whose repeat_kv is wrapped (composed_only takes the wrappers out)


def _grouped_repeat_kv(original):
    def repeat_kv(hidden_states, n_rep):
        if _grouped["depth"] and ops.kernels() is not None:
            return hidden_states
        return original(hidden_states, n_rep)

    repeat_kv.llmx_original = original
    return repeat_kv


def _grouped_kv_forward(layer) -> None:
    """Let `layer` (an attention layer whose attn_func was switched) hand grouped key/value heads to attn_func,
    where its class's forward repeats them through its module's `repeat_kv` (Llama's form)."""
    forward = vars(type(layer)).get("forward")
    module = sys.modules.get(type(layer).__module__)
    if forward is None or "repeat_kv" not in forward.__code__.co_names or not callable(getattr(module, "repeat_kv", None)):
        return
    if getattr(module.repeat_kv, "llmx_original", None) is None:
        module.repeat_kv = _grouped_repeat_kv(module.repeat_kv)
        _grouped_modules.append(module)
    original = layer.forward

    @functools.wraps(original)  # its signature too: the decoder layer's forward passes the arguments it names
    def grouped_forward(*args, **kwargs):
        _grouped["depth"] += 1
        try:
            return original(*args, **kwargs)
        finally:
            _grouped["depth"] -= 1

    grouped_forward.llmx_original = original
    layer.forward = grouped_forward


def _switch_attention(layer) -> bool:
    original = getattr(layer, "attn_func", None)
    base = getattr(original, "func", original)  # functools.partial(..., skip_recompute=True)
    if getattr(base, "__name__", "") != "scaled_dot_product_attention" or getattr(original, "llmx_original", None):
        return False
    wrapped = _attention_wrapper(original)
    b, s, h, d = 2, 7, 2, 4
    q, k, v = _probe([b, s, h, d], "float32"), _probe([b, s, h, d], "float32") * 0.7, _probe([b, s, h, d], "float32") * 1.3
    seg = paddle.to_tensor(np.array([[0, 0, 0, 1, 1, 2, 2], [0] * 7], dtype="int64"))
    allowed = (seg.unsqueeze(2) == seg.unsqueeze(1)) & paddle.tril(paddle.ones([s, s], dtype="bool"))
    mask = paddle.where(allowed, paddle.zeros([1]), paddle.full([1], -1e30)).unsqueeze(1)
    config = getattr(layer, "config", None)
    # grouped heads (2 query heads per key/value head), as _grouped_kv_forward hands them over: the kernel on a
    # packed mask, PaddleNLP's function on a padded one
    kg, vg = k[:, :, :1], v[:, :, 1:]
    full = lambda t: paddle.repeat_interleave(t, 2, axis=2)  # noqa: E731
    padded = paddle.where(paddle.to_tensor(np.arange(s) < s - 2), mask, paddle.full([1], -1e30))
    with paddle.no_grad():
        try:
            if config is None or not all(_agree(original(q, config, *kv, m, False), wrapped(q, config, *gkv, m, False))
                                         for kv, gkv, m in [((k, v), (k, v), mask), ((full(kg), full(vg)), (kg, vg), mask),
                                                            ((full(kg), full(vg)), (kg, vg), padded)]):
                return False
        except Exception:  # noqa: BLE001
            return False
    layer.attn_func = wrapped
    _grouped_kv_forward(layer)
    return True


def _decoder_forward(layer, original, as_tuple: bool):
    """Llama's decoder layer with the attention's residual add inside the post-attention norm."""
    sig = inspect.signature(original)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    extras = [n for n, q in sig.parameters.items() if q.kind not in named]  # *args, **kwargs
    attn_params = [n for n, q in inspect.signature(layer.self_attn.forward).parameters.items() if q.kind in named]
    norm = layer.post_attention_layernorm

    def forward(*args, **kwargs):
        p = sig.bind(*args, **kwargs)
        p.apply_defaults()
        a = dict(p.arguments)
        x = a.pop("hidden_states")
        unknown = any([a.pop(n, None) for n in extras])  # extra arguments (Deepseek's padding_mask): the layer's own way
        attention_only_recompute = (getattr(layer, "enable_recompute", False) and getattr(layer, "layerwise_recompute", False)
                                    and getattr(layer, "recompute_granularity", None) == "full_attn")
        if (ops.kernels() is None or unknown or a.get("output_attentions") or a.get("use_cache")
                or a.get("past_key_value") is not None or attention_only_recompute
                or x.dtype not in (paddle.float32, paddle.float64)):
            return original(*args, **kwargs)
        out = layer.self_attn(layer.input_layernorm(x), **{k: v for k, v in a.items() if k in attn_params})
        out = out[0] if isinstance(out, tuple) else out
        y, h = ops.add_rms_norm(out, x, norm.weight, _eps(norm))  # out + x: the same sum as the layer's x + out
        h = h + layer.mlp(y)
        return (h,) if as_tuple else h

    forward.llmx_original = original
    return forward


def _switch_decoder_layer(layer) -> bool:
    """Checked on a random input with position ids and a causal mask, as the model calls its layers."""
    parts = [getattr(layer, n, None) for n in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")]
    if not all(isinstance(p, paddle.nn.Layer) for p in parts) or "forward" in vars(layer):
        return False
    norm = parts[2]
    if getattr(vars(norm).get("forward"), "llmx_original", None) is None:  # not switched to llmx.ops.rms_norm
        return False
    original = layer.forward
    b, s, hidden = 2, 5, norm.weight.shape[0]
    x = _probe([b, s, hidden], "float32" if norm.weight.dtype == paddle.float32 else "float64")
    pos = paddle.to_tensor(np.tile(np.arange(s, dtype="int64"), (b, 1)))
    mask = paddle.where(paddle.tril(paddle.ones([s, s], dtype="bool")), paddle.zeros([1]), paddle.full([1], -1e30))
    mask = mask.astype(x.dtype).reshape([1, 1, s, s]).expand([b, 1, s, s])
    training = layer.training
    layer.eval()  # no dropout in the comparison
    try:
        with paddle.no_grad():
            expected = original(x, position_ids=pos, attention_mask=mask)
            fused = _decoder_forward(layer, original, isinstance(expected, tuple))
            same = _agree(expected, fused(x, position_ids=pos, attention_mask=mask))
    except Exception:  # noqa: BLE001 - another signature, or an MLP returning more (MoE): not a match
        same = False
    finally:
        layer.train() if training else layer.eval()
    if same:
        layer.forward = fused
    return same


def _lm_head_weight(head, vocab: int):
    """(weight, transpose) when `head` is a bias-free matmul of the hidden states with its weight
    ([hidden, vocab], or [vocab, hidden] with transpose: tied to the embedding), else None.
    Transposed or not: the head's `transpose_y` where it has one (Llama), else read off the shape
    (Gemma's head takes it from the config, Bloom's `decoder_weight` is always [vocab, hidden]);
    the probe in _switch_cross_entropy catches a wrong reading."""
    weight = getattr(head, "weight", None)
    weight = getattr(head, "decoder_weight", None) if weight is None else weight
    if weight is None or len(weight.shape) != 2 or getattr(head, "bias", None) is not None:
        return None
    if weight.dtype not in (paddle.float32, paddle.float64):
        return None
    transpose = getattr(head, "transpose_y", None)
    if not isinstance(transpose, bool):
        transpose = weight.shape[1] != vocab
    return weight, transpose


def _loss_of(out):
    return out[0] if isinstance(out, (tuple, list)) else out.loss


def _without_logits(out):
    """The model's output with logits None (they were never formed)."""
    if isinstance(out, (tuple, list)):  # (loss, logits, ...)
        return (out[0], None, *out[2:])
    # a ModelOutput keeps a key assigned None; a new one without it reads logits as None
    return type(out)(**{k: v for k, v in out.items() if k != "logits"})


def _cross_entropy_forward(model, original, head, criterion, vocab):
    sig = inspect.signature(original)

    @functools.wraps(original)  # callers read the parameters (the Trainer drops unused columns by them)
    def forward(*args, **kwargs):
        labels = sig.bind_partial(*args, **kwargs).arguments.get("labels")
        # LoRA on lm_head replaces the layer: then (and without labels) the family's own path
        same_layers = model.lm_head is head and model.criterion is criterion
        found = _lm_head_weight(head, vocab) if labels is not None and same_layers else None
        # training only: there the Trainer (and the ptx loss) read the loss alone, while an evaluation
        # may want the logits beside it (metrics, a user's own loop)
        if found is None or ops.kernels() is None or not (model.training or _probing["on"]):
            return original(*args, **kwargs)
        weight, transpose = found
        ignore = getattr(criterion, "ignore_index", -100)

        def fused_loss(hidden, target):
            return ops.fused_linear_cross_entropy(hidden, weight, target, ignore, transpose)

        head.forward, criterion.forward = (lambda hidden, *a, **k: hidden), fused_loss
        try:
            out = original(*args, **kwargs)
        finally:
            del head.forward, criterion.forward  # back to the class's methods
        return _without_logits(out)

    forward.llmx_original = original
    return forward


def _switch_cross_entropy(model) -> bool:
    head, criterion = getattr(model, "lm_head", None), getattr(model, "criterion", None)
    if not isinstance(head, paddle.nn.Layer) or not isinstance(criterion, paddle.nn.Layer) or "forward" in vars(head) \
            or "forward" in vars(criterion) or getattr(model.forward, "llmx_original", None) is not None:
        return False
    config = getattr(model, "config", None)
    if config is None or not isinstance(getattr(config, "vocab_size", None), int) or \
            _lm_head_weight(head, config.vocab_size) is None or getattr(config, "tensor_parallel_degree", 1) > 1 \
            or getattr(config, "sequence_parallel", False):
        return False
    original = model.forward
    wrapped = _cross_entropy_forward(model, original, head, criterion, config.vocab_size)
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(rng.integers(0, config.vocab_size, (2, 6)).astype("int64"))
    labels = ids.numpy().copy()
    labels[:, :2] = -100
    labels = paddle.to_tensor(labels)
    training = model.training
    model.eval()  # no dropout in the comparison
    _probing["on"] = True  # the fused path, although in eval mode
    try:
        with paddle.no_grad():
            same = _agree(_loss_of(original(input_ids=ids, labels=labels)), _loss_of(wrapped(input_ids=ids, labels=labels)))
    except Exception:  # noqa: BLE001 - a forward of another shape: not a match
        same = False
    finally:
        _probing["on"] = False
        model.train() if training else model.eval()
    if not same:
        return False
    # not model.forward = ...: PaddleNLP's PretrainedModel.__setattr__ (adapt_stale_fwd_patch) reads the
    # new forward's own argspec (*args, **kwargs, not the wrapped one's), warns, and re-wraps it to pass
    # the model as a first argument
    object.__setattr__(model, "forward", wrapped)
    return True


def enable(model, mode: str, skip: tuple = ()) -> list:
    """Switch `model`'s matching layers to the fused ops under `mode` (auto | on | off); the names
    of the ops switched (empty when off, when the kernels did not load, or nothing matched). `skip`:
    ops (names of llmx.ops.OPS) left composed, for comparing one op's effect with the others on (rope's
    wrapper is per module: skipped only where no model of the family switched it before)."""
    ops.reset_used()
    if not ops.configure(mode):
        return []
    switched = set()
    modules = set()
    wanted = lambda name: name not in skip  # noqa: E731
    for layer in model.sublayers(include_self=True):
        modules.add(type(layer).__module__)
        if wanted("rms_norm") and type(layer).__name__.endswith("RMSNorm") and _switch_rms_norm(layer):
            switched.add("rms_norm")
        elif wanted("swiglu") and _switch_mlp(layer):
            switched.add("swiglu")
        elif wanted("packed_attention") and _switch_attention(layer):
            switched.add("packed_attention")
    for name in sorted(modules) if wanted("rope") else ():
        if name.startswith("paddlenlp.transformers.") and _switch_rope(sys.modules[name]):
            switched.add("rope")
    for layer in model.sublayers() if wanted("add_rms_norm") else ():  # after the norms (a layer precedes its own)
        if _switch_decoder_layer(layer):
            switched.add("add_rms_norm")
    if wanted("fused_linear_cross_entropy") and _switch_cross_entropy(model):  # last: its probe runs the model as it will run
        switched.add("fused_linear_cross_entropy")
    ops.reset_used()  # the probes above ran the kernels: count only what the model runs from here on
    log.info("fused ops switched on: %s", ", ".join(sorted(switched)) or "none (no layer of this family matches)")
    return sorted(switched)


@contextlib.contextmanager
def composed_only(model):
    """`model` as PaddleNLP built it while inside: for a static export, whose program must hold
    Paddle's ops only (Paddle Inference does not load llmx's kernels; dy2static also cannot convert
    a forward set on the instance). The switched layers get their own forwards back, and the
    kernels are off (the rotary wrapper is per module, shared by every model: it then calls the
    original; the modules' repeat_kv wrappers are taken out, as dy2static cannot convert them)."""
    swapped = []
    for layer in model.sublayers(include_self=True):
        for name in ("forward", "attn_func"):
            fn = layer.__dict__.get(name)
            if getattr(fn, "llmx_original", None) is not None:
                swapped.append((layer, name, fn))
    mode = ops.mode()
    wrapped_repeat = [(module, module.repeat_kv) for module in _grouped_modules]
    try:
        for module, fn in wrapped_repeat:
            module.repeat_kv = fn.llmx_original
        for layer, name, fn in swapped:
            if name == "forward":
                del layer.__dict__[name]  # back to the class's method
            else:
                object.__setattr__(layer, name, fn.llmx_original)
        if mode is not None:
            ops.configure("off")
        yield model
    finally:
        for module, fn in wrapped_repeat:
            module.repeat_kv = fn
        for layer, name, fn in swapped:
            object.__setattr__(layer, name, fn)
        if mode is not None:
            ops.configure(mode)
