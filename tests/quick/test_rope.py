"""RoPE scaling's arithmetic (llmx.rope) against transformers 4.55.4's ROPE_INIT_FUNCTIONS, and its one-line
refusals before launch (paddle-free). The models that use it: tests/runs/test_rope_scaling.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import input_error

from llmx import rope

CONTEXT = 64
CASES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0},
    "yarn_deepseek": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 16, "mscale": 0.707,
                      "mscale_all_dim": 1.0, "beta_fast": 16.0, "beta_slow": 2.0},
    "yarn_untruncated": {"rope_type": "yarn", "factor": 8.0, "attention_factor": 1.5, "truncate": False},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}


@pytest.mark.parametrize("case", list(CASES))
def test_inverse_frequencies_and_attention_factor_equal_transformers(case):
    """For head sizes 8, 16 and 128 and two bases, at the context and past it (dynamic refits there)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = CASES[case]
    for head_dim, base in ((8, 10000.0), (16, 10000.0), (128, 500000.0)):
        config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, rope_theta=base,
                                          max_position_embeddings=CONTEXT, rope_scaling=dict(scaling))
        for seq_len in (None, CONTEXT, 3 * CONTEXT):
            ref, ref_factor = ROPE_INIT_FUNCTIONS[rope.scaling_type(scaling)](config, "cpu", seq_len=seq_len)
            ours, factor = rope.inverse_frequencies(scaling, head_dim, base, CONTEXT, seq_len=seq_len)
            np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6, err_msg=f"{case} {head_dim} {seq_len}")
            assert factor == pytest.approx(float(ref_factor), rel=1e-12)
            positions = torch.arange(2 * CONTEXT, dtype=torch.float32)  # angles past the context
            np.testing.assert_allclose(np.cos(np.outer(positions.numpy(), ours.astype(np.float64))),
                                       torch.outer(positions, ref).cos().numpy(), atol=1e-5)
    if rope.scaling_type(scaling) == "dynamic":  # past the context the base grows with the length
        assert not np.allclose(rope.inverse_frequencies(scaling, 16, 1e4, CONTEXT, 2 * CONTEXT)[0],
                               rope.inverse_frequencies(scaling, 16, 1e4, CONTEXT, CONTEXT)[0])


REFUSALS = {
    "unknown_type": (["model=llama", "model.rope_scaling={rope_type:ntk,factor:2.0}"],
                     "model.rope_scaling.rope_type='ntk': allowed: linear, dynamic, yarn, llama3"),
    "no_type": (["model=llama", "model.rope_scaling={factor:2.0}"], "model.rope_scaling: no rope_type (or type)"),
    "missing_key": (["model=llama", "model.rope_scaling={rope_type:llama3,factor:8.0}"],
                    "model.rope_scaling: rope_type llama3 needs original_max_position_embeddings"),
    "unknown_key": (["model=qwen2", "model.rope_scaling={type:linear,factor:2.0,beta_fast:32}"],
                    "model.rope_scaling.beta_fast: not a key of rope_type linear (allowed: factor)"),
    "factor_below_one": (["model=mistral", "model.rope_scaling={rope_type:yarn,factor:0.5}"],
                         "model.rope_scaling.factor=0.5: a number >= 1"),
    "bad_original": (["model=gemma", "model.rope_scaling={rope_type:dynamic,factor:2,original_max_position_embeddings:1.5}"],
                     "model.rope_scaling.original_max_position_embeddings=1.5: a positive integer"),
    "llama3_bands": (["model=llama", "model.rope_scaling={rope_type:llama3,factor:8.0,low_freq_factor:4.0,"
                      "high_freq_factor:1.0,original_max_position_embeddings:16}"],
                     "model.rope_scaling.high_freq_factor=1.0: must be greater than low_freq_factor=4.0"),
    "qwen_v1": (["model=qwen", "model.rope_scaling={rope_type:linear,factor:2.0}"],
                "model.rope_scaling: model family qwen takes no RoPE scaling (QWen v1 scales"),
    "chatglm2": (["model=chatglm2", "model.rope_scaling={rope_type:linear,factor:2.0}"],
                 "model.rope_scaling: model family chatglm2 takes no RoPE scaling (ChatGLM2 builds"),
    "bloom": (["model=bloom", "model.rope_scaling={rope_type:linear,factor:2.0}"],
              "model.rope_scaling: model family bloom takes no RoPE scaling (its positions are not rotary"),
    "baichuan_13b": (["model=baichuan", "model.size=13b", "model.rope_scaling={rope_type:linear,factor:2.0}"],
                     "model family baichuan with alibi=true has ALiBi positions, no rotary embeddings"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_scalings_are_refused_in_one_line_before_launch(case):
    overrides, expected = REFUSALS[case]
    line = input_error(*overrides)
    assert expected in line and "\n" not in line, line


def test_a_checkpoints_rope_scaling_is_checked_like_the_key(tmp_path):
    """A Hugging Face directory's config.json rope_scaling is read at validation (a bad one names the file), and
    model.rope_scaling={rope_type: default} turns a checkpoint's scaling off."""
    hf = tmp_path / "hf"
    hf.mkdir()
    config = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=128, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=32, rope_scaling={"type": "yarn", "factor": 4.0, "beta_fast": "fast"})
    (hf / "config.json").write_text(json.dumps(config))
    (hf / "model.safetensors").write_bytes(b"")
    line = input_error("model=qwen2", f"model.name_or_path={hf}", "stage=infer")
    assert f"{hf}: config.json rope_scaling.beta_fast='fast': a number" in line, line
    for scaling in ("{rope_type:default}", "{type:yarn,factor:4.0}"):  # off, or another one over it: no error
        from helpers import compose

        from llmx.schema.model import validate_rope_scaling
        from llmx.families import family

        cfg = compose("model=qwen2", f"model.name_or_path={hf}", f"model.rope_scaling={scaling}")
        validate_rope_scaling(cfg.model, family("qwen2"))
