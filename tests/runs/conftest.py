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
def default_job(tmp_path_factory):
    """`python launch.py` with no overrides but the run dir (and every eval sample logged): the README's main
    job, run once; (run dir, completed process with the console output as text)."""
    import subprocess
    import sys

    from helpers import REPO

    run = tmp_path_factory.mktemp("default") / "run"
    raw = subprocess.run([sys.executable, "launch.py", f"hydra.run.dir={run}", "stage.eval.samples_to_log=64"],
                         cwd=REPO, capture_output=True, timeout=600)  # (bytes: text mode would turn \r into \n)
    assert raw.returncode == 0, raw.stderr[-3000:]
    return run, subprocess.CompletedProcess(raw.args, 0, raw.stdout.decode(), raw.stderr.decode())


@pytest.fixture(scope="session")
def sft_run(default_job):
    """The start of the alignment and RL runs: the default SFT job's run directory."""
    return default_job[0]
