"""stage=merge input errors: one line naming the tensor, file or key, before paddle is imported."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import config_error, input_error  # noqa: E402
from merge_fixtures import random_model, write_model  # noqa: E402


def test_mismatches_fail_with_one_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tensors = random_model(a, 0)
    bad = dict(tensors, **{"llama.layers.1.mlp.up_proj.weight": np.zeros((8, 10), np.float32)})
    write_model(b, bad)
    err = input_error("stage=merge", f"stage.models=[{a},{b}]")
    assert err == (f"llmx: config error: stage.models: tensor llama.layers.1.mlp.up_proj.weight has shape [8, 12] in {a} "
                   f"but [8, 10] in {b}"), err
    write_model(b, tensors, config={"hidden_size": 16})
    err = input_error("stage=merge", f"stage.models=[{a},{b}]")
    assert "config.json: hidden_size=16 differs from 8" in err and str(b) in err
    write_model(b, tensors, tokenizer="other vocab")
    err = input_error("stage=merge", f"stage.models=[{a},{b}]")
    assert f"the tokenizer in {b} differs from the one in {a}" in err
    # the same pair merges when told whose tokenizer to keep
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n  - model: {b}\ntokenizer_source: base\n")
    write_model(b, {k: v for k, v in tensors.items() if k != "lm_head.weight"})
    err = input_error("stage=merge", f"stage.config={recipe}")
    assert err == f"llmx: config error: stage.config: tensor lm_head.weight of {a} is missing from {b}", err


def test_recipe_and_key_errors(tmp_path):
    random_model(tmp_path / "a", 0)
    a = tmp_path / "a"
    assert input_error("stage=merge", "stage.method=frankenmerge", f"stage.models=[{a}]").startswith(
        "llmx: config error: stage.method='frankenmerge': allowed: linear, slerp, task_arithmetic")
    assert input_error("stage=merge", "stage.method=ties", f"stage.models=[{a}]") == \
        "llmx: config error: stage: ties needs a base model (stage.base_model / base_model:)"
    assert input_error("stage=merge", f"stage.models=[{a}]", "stage.weights=[1,2]") == \
        "llmx: config error: stage.weights=[1.0, 2.0]: needs one weight per model (1)"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\nparameters:\n  t: 1.5\n")
    assert input_error("stage=merge", f"stage.config={recipe}") == f"llmx: config error: {recipe}: t=1.5: must be in [0, 1]"
    recipe.write_text("merge_method: linear\nmodels: [\n")
    assert input_error("stage=merge", f"stage.config={recipe}").startswith(f"llmx: config error: {recipe}:")
    line = config_error("stage=merge", f"stage.models=[{a},{tmp_path / 'nope'}]", tmp_path=tmp_path)
    assert line == f"llmx: config error: stage: model {tmp_path / 'nope'}: no such directory (local paths only: llmx never downloads)"


def test_mergekit_options_llmx_does_not_do_are_refused_in_one_line(tmp_path):
    a = tmp_path / "a"
    random_model(a, 0)
    recipe = tmp_path / "r.yaml"
    cases = {
        f"merge_method: model_stock\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {a}}}]\n"
        "parameters: {filter_wise: true}\n": "llmx does not do mergekit's filter_wise",
        f"merge_method: linear\nmodules: {{}}\nmodels: [{{model: {a}}}]\n": "llmx does not do mergekit's modules",
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 1]}}, "
        f"{{model: {a}, layer_range: [1, 2]}}]\n": "passthrough takes one source per slice, got 2",
        f"merge_method: della\nbase_model: {a}\nmodels: [{{model: {a}}}]\n"
        "parameters: {density: 0.1, epsilon: 0.15}\n": "della: density 0.1 -/+ epsilon 0.15 must lie in (0, 1)",
    }
    for text, expected in cases.items():
        recipe.write_text(text)
        err = input_error("stage=merge", f"stage.config={recipe}")
        assert err.startswith(f"llmx: config error: {recipe}: ") and expected in err and "\n" not in err, err
