"""Every model family at its `tiny` size builds through the engine, learns, generates, and takes LoRA/Prefix;
llmx.plan's parameter formulas count exactly what PaddleNLP builds.

In-process (one paddle import for all families) so the whole matrix stays quick.
"""
from __future__ import annotations

import math

import pytest
from helpers import compose

from llmx.schema import CONF_DIR, asset_path, model_hparams
from llmx.data.formats import read_sft
from llmx.data.encoders import sft_encoder
from llmx.families import FAMILIES as TABLE
from llmx.plan import count_params
from llmx.stages import validate

FAMILIES = sorted(p.stem for p in CONF_DIR.glob("model/*.yaml") if p.stem != "tiny")


def _cfg(family: str, stage: str = "sft"):
    cfg = compose(f"model={family}", "model.size=tiny", f"stage={stage}")
    validate(cfg)
    return cfg


def _batch(tokenizer, n: int = 8):
    from llmx.engine.batching import NUM_TOKENS, encoding_collator

    enc = sft_encoder(tokenizer, 64, 48)  # the family's encoding (ChatGLM v1's GLM encoding)
    convs = read_sft(asset_path("demo/sft_train.jsonl"))[:n]
    batch = encoding_collator(tokenizer)([enc.encode(c) for c in convs])
    batch.pop(NUM_TOKENS)  # the trainer's bookkeeping, not a model input
    return batch, enc, convs


def _loss(model, batch):
    out = model(**batch)
    return out[0] if isinstance(out, tuple) else out.loss


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_learns_and_generates(family):
    import paddle

    from llmx.engine.generate import greedy_generate
    from llmx.engine.model import build_model, build_tokenizer

    paddle.set_device("cpu")
    cfg = _cfg(family)
    tok = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, seed=0)
    batch, enc, convs = _batch(tok)
    opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    losses = []
    for _ in range(8):
        loss = _loss(model, batch)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5, losses
    # left-padded batched generation must agree with one prompt at a time (padding is masked)
    prompts = [enc.prompt_for_generation(c) for c in convs[:4]]
    batched = greedy_generate(model, tok, prompts, 4, 4)
    single = [greedy_generate(model, tok, [p], 4, 1)[0] for p in prompts]
    assert batched == single and all(len(o) <= 4 for o in batched)
    assert len({len(p) for p in prompts}) > 1, "prompts of one length would not test padding"


ADAPTER_CASES = [(f, "lora") for f in FAMILIES] + [(f, "prefix") for f in FAMILIES if TABLE[f].prefix_cache]


def _tensors(x) -> list:
    import paddle

    if isinstance(x, paddle.Tensor):
        return [x]
    return [t for y in x for t in _tensors(y)] if isinstance(x, (tuple, list)) else []


def _adapter_size(base, cfg) -> int:
    """The parameters the adapter adds to `base`, counted from the base's own layers. LoRA: r x (in + out)
    for each Linear a target regex names in full. Prefix: num_prefix_tokens entries of the base's own
    key/value cache (every layer's keys and values of one token, in whatever layout the family keeps)."""
    import re

    import paddle

    p = cfg.stage.peft
    if p.method == "lora":
        targets = p.target_modules or TABLE[cfg.model.family].lora_targets
        return sum(p.lora_r * sum(layer.weight.shape) for name, layer in base.named_sublayers()
                   if isinstance(layer, paddle.nn.Linear) and any(re.fullmatch(t, name) for t in targets))
    ids = paddle.to_tensor([[5, 6, 7, 8, 9]])
    with paddle.no_grad():
        out = base(input_ids=ids, use_cache=True, return_dict=True)
    cache = out[1] if isinstance(out, tuple) else out.past_key_values  # (OPT answers a tuple)
    per_token = sum(int(t.numel()) for t in _tensors(cache)) // ids.shape[1]
    return p.num_prefix_tokens * per_token


def _reference_loss(model, batch) -> float:
    """Mean cross-entropy of the model's logits (no labels given) over the target tokens, in numpy."""
    import numpy as np
    import paddle

    from llmx.tokens import IGNORE_INDEX

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with paddle.no_grad():
        out = model(**inputs)
    logits = (out if isinstance(out, paddle.Tensor) else out[0] if isinstance(out, tuple) else out.logits)
    logits = logits.numpy().astype("float64")
    labels = batch["labels"].numpy()
    target = labels != IGNORE_INDEX
    top = logits.max(-1)
    log_norm = np.log(np.exp(logits - top[..., None]).sum(-1)) + top
    picked = np.take_along_axis(logits, np.where(target, labels, 0)[..., None], -1)[..., 0]
    return float(((log_norm - picked) * target).sum() / target.sum())


@pytest.mark.parametrize("family,method", ADAPTER_CASES)
def test_tiny_family_adapters_train_only_adapter_params(family, method):
    """The adapter adds exactly the method's parameters (_adapter_size), the loss is the cross-entropy of the
    wrapped model's logits over the target tokens, and gradients reach the adapter only: every LoRA B and
    every prefix token; no LoRA A yet (B starts at zero, so nothing flows back through it)."""
    import numpy as np
    import paddle

    from llmx.engine.model import build_model, build_tokenizer
    from llmx.engine.peft import count_parameters, wrap_peft

    paddle.set_device("cpu")
    cfg = _cfg(family, method)
    tok = build_tokenizer(cfg.model)
    base = build_model(cfg.model, tok, seed=0)
    expected = _adapter_size(base, cfg)
    model = wrap_peft(base, cfg, base_ref=None)
    assert count_parameters(model, trainable_only=True) == expected > 0
    batch, _, _ = _batch(tok)
    loss = _loss(model, batch)
    loss.backward()
    assert float(loss) == pytest.approx(_reference_loss(model, batch), rel=1e-5)
    params = dict(model.named_parameters())
    frozen_with_grad = [n for n, p in params.items() if p.stop_gradient and p.grad is not None]
    assert not frozen_with_grad, frozen_with_grad[:5]
    grads = {n: p.grad.numpy() for n, p in params.items() if not p.stop_gradient}
    if method == "lora":
        assert {n.rsplit(".", 1)[1] for n in grads} == {"lora_A", "lora_B"}
        # A routed expert that the last layer's router gives no target token gets no gradient (no layer after
        # it carries other tokens' outputs to the loss): experts' B only as a whole.
        routed = {n for n in grads if ".experts." in n and n.endswith("lora_B")}
        assert all((g == 0).all() if n.endswith("lora_A") else (g != 0).any() for n, g in grads.items()
                   if n not in routed), {n: float(np.abs(g).sum()) for n, g in grads.items()}
        assert not routed or any((grads[n] != 0).any() for n in routed)
    else:
        (g,) = grads.values()  # the prefix embedding: a row per prefix token, each attended to everywhere
        assert g.shape[0] == cfg.stage.peft.num_prefix_tokens and (g != 0).any(axis=1).all()


# Variants of tiny that switch the formulas' other branches (tied heads, projections, biases, post-LN, MQA).
VARIANTS = [
    ("llama", ["model.overrides.tie_word_embeddings=true"]),
    ("qwen2", ["model.overrides.tie_word_embeddings=true"]),
    ("gemma", ["model.overrides.num_key_value_heads=1", "model.overrides.head_dim=32"]),
    ("qwen", ["model.overrides.no_bias=false"]),
    ("deepseek_v3", ["model.overrides.q_lora_rank=null", "model.overrides.attention_bias=true",
                     "model.overrides.first_k_dense_replace=0", "model.overrides.topk_method=greedy",
                     "model.overrides.scoring_func=softmax", "model.overrides.n_shared_experts=null"]),
    ("chatglm2", ["model.overrides.add_bias_linear=true", "model.overrides.multi_query_group_num=1"]),
    ("opt", ["model.overrides.word_embed_proj_dim=32", "model.overrides.normalize_before=false"]),
    ("qwen3", ["model.overrides.attention_bias=true", "model.overrides.tie_word_embeddings=false"]),
]


def test_tiny_parameter_counts_are_exact():
    """Every family at `tiny` (and the variants): formula == the built PaddleNLP model's parameter count."""
    import paddle

    from llmx.engine.model import build_model, build_tokenizer
    from llmx.engine.peft import count_parameters

    paddle.set_device("cpu")
    families = sorted(p.stem for p in CONF_DIR.glob("model/*.yaml") if p.stem != "tiny")  # chatglm v1 too
    cases = [(f, [f"model={f}"]) for f in families] + [(f, [f"model={f}", *o]) for f, o in VARIANTS]
    tokenizer = build_tokenizer(compose().model)  # every tiny size uses the bundled tokenizer
    wrong = []
    for family, overrides in cases:
        m = compose(*overrides, "model.size=tiny").model
        built = count_parameters(build_model(m, tokenizer, seed=0))
        counted = count_params(family, model_hparams(m)).total
        if counted != built:
            wrong.append(f"{' '.join(overrides)}: formula {counted} != model {built}")
    assert not wrong, "\n".join(wrong)
