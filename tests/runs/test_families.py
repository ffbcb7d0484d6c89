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
from llmx.data.sft import SftEncoder
from llmx.families import FAMILIES as TABLE
from llmx.plan import count_params
from llmx.stages import validate

FAMILIES = sorted(p.stem for p in CONF_DIR.glob("model/*.yaml") if p.stem not in ("tiny", "chatglm"))


def _cfg(family: str, stage: str = "sft"):
    cfg = compose(f"model={family}", "model.size=tiny", f"stage={stage}")
    validate(cfg)
    return cfg


def _batch(tokenizer, n: int = 8):
    from llmx.engine.batching import NUM_TOKENS, PadCollator

    enc = SftEncoder(tokenizer, 64, 48)
    convs = read_sft(asset_path("demo/sft_train.jsonl"))[:n]
    batch = PadCollator(tokenizer.pad_token_id)([enc.encode(c) for c in convs])
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


@pytest.mark.parametrize("family,method", ADAPTER_CASES)
def test_tiny_family_adapters_train_only_adapter_params(family, method):
    import paddle

    from llmx.engine.model import build_model, build_tokenizer
    from llmx.engine.peft import count_parameters, wrap_peft

    paddle.set_device("cpu")
    cfg = _cfg(family, method)
    tok = build_tokenizer(cfg.model)
    model = wrap_peft(build_model(cfg.model, tok, seed=0), cfg, base_ref=None)
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    assert 0 < count_parameters(model, trainable_only=True) < 0.5 * count_parameters(model)
    batch, _, _ = _batch(tok)
    loss = _loss(model, batch)
    loss.backward()
    assert math.isfinite(float(loss))
    assert any(float(p.grad.abs().sum()) > 0 for p in trainable if p.grad is not None)


# Variants of tiny that switch the formulas' other branches (tied heads, projections, biases, post-LN, MQA).
VARIANTS = [
    ("llama", ["model.overrides.tie_word_embeddings=true"]),
    ("qwen2", ["model.overrides.tie_word_embeddings=true"]),
    ("gemma", ["model.overrides.num_key_value_heads=1", "model.overrides.head_dim=32"]),
    ("qwen", ["model.overrides.no_bias=false"]),
    ("chatglm2", ["model.overrides.add_bias_linear=true", "model.overrides.multi_query_group_num=1"]),
    ("opt", ["model.overrides.word_embed_proj_dim=32", "model.overrides.normalize_before=false"]),
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
