"""Fixtures the run tests share (session-scoped: made once)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The bundled tiny Llama with random weights, saved as a model dir (with its tokenizer). Weights are
    drawn wider than the default init (initializer_range 0.5), so its next-token distributions are peaked
    like a trained model's: greedy choices are never near-ties that float rounding could flip."""
    import paddle
    from helpers import compose

    from llmx.engine.model import build_model, build_tokenizer

    paddle.set_device("cpu")
    cfg = compose("model=tiny", "+model.overrides.initializer_range=0.5")
    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, seed=0)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    """A short SFT of the tiny model (the start of the alignment and RL runs): weak, but it prefers right
    answers a little more than chance."""
    run = tmp_path_factory.mktemp("align") / "sft"
    from helpers import FAST, launch

    launch(f"hydra.run.dir={run}", *FAST, "stage.train.max_steps=150", "stage.eval.num_samples=8")  # a real run dir
    return run
