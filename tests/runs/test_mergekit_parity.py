"""stage=merge against mergekit 0.1.4 itself: the same Hugging Face checkpoints (tiny random Llamas saved
by transformers) and the same recipe given to both tools, every tensor compared (1e-6). llmx merges its
conversion of the checkpoints; its result goes back to Hugging Face names with llmx_to_hf. The random
methods (dare, della) draw different masks (numpy here, torch there): what both must agree on is tested
statistically: the kept fraction, the L1-norm rescale, DELLA's preference for large magnitudes.

One session of mergekit runs every recipe (tests/mergekit_ref.py installs it once per machine)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mergekit_ref  # noqa: E402

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

W = (0.5, 0.3, 0.4)  # not summing to 1: normalizing shows


def _models(weights=W, **per_model):
    out = []
    for i, w in enumerate(weights):
        params = {**({"weight": w} if w is not None else {}), **{k: v[i] for k, v in per_model.items()}}
        out.append({"model": f"m{i + 1}", "parameters": params})
    return out


def _gta(method, base_listed=False, params=None, **per_model):
    models = ([{"model": "base"}] if base_listed else []) + _models(**per_model)
    return {"merge_method": method, "base_model": "base", "models": models, "parameters": params or {}}


SLERP_T = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
           {"value": 0.5}]  # mergekit's own example recipe
RECIPES = {
    "linear": {"merge_method": "linear", "models": _models()},
    "linear_no_normalize": {"merge_method": "linear", "models": _models(), "parameters": {"normalize": False}},
    "task_arithmetic": _gta("task_arithmetic"),
    "task_arithmetic_normalize": _gta("task_arithmetic", params={"normalize": True}),
    "task_arithmetic_lambda_filters": _gta("task_arithmetic", params={
        "lambda": 0.7, "weight": [{"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.4}]}, weights=(0.5, None, 0.1)),
    "ties_density_0.5": _gta("ties", base_listed=True, density=(0.5, 0.5, 0.5)),
    "ties_density_0.7": _gta("ties", density=(0.7, 0.7, 0.7)),
    "ties_density_0.3": _gta("ties", density=(0.3, 0.3, 0.3)),
    "ties_mixed_density_int8_mask": _gta("ties", params={"int8_mask": True}, density=(0.3, 0.7, 0.5)),
    "ties_no_normalize_gradient_density": _gta("ties", params={"normalize": False, "density": [0.2, 0.8]}),
    "breadcrumbs": _gta("breadcrumbs", density=(0.9, 0.8, 0.7)),
    "breadcrumbs_gamma": _gta("breadcrumbs", params={"gamma": 0.1, "density": 0.6}),
    "breadcrumbs_ties": _gta("breadcrumbs_ties", params={"gamma": 0.05}, density=(0.9, 0.8, 0.7)),
    "slerp_base_listed": {"merge_method": "slerp", "base_model": "base",
                          "models": [{"model": "base"}, {"model": "m1"}], "parameters": {"t": 0.3}},
    "slerp_base_apart": {"merge_method": "slerp", "base_model": "base", "models": [{"model": "m1"}],
                         "parameters": {"t": 0.6}},
    "slerp_filter_gradients": {"merge_method": "slerp", "base_model": "base",
                               "models": [{"model": "base"}, {"model": "m2"}], "parameters": {"t": SLERP_T}},
    "model_stock": {"merge_method": "model_stock", "base_model": "base", "models": _models()},
    "passthrough": {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "m1", "layer_range": [0, 2]}]}, {"sources": [{"model": "m2", "layer_range": [1, 2]}]}]},
    "passthrough_scale": {"merge_method": "passthrough", "parameters": {"scale": [{"filter": "o_proj", "value": 0.5},
                                                                                  {"value": 1.0}]},
                          "slices": [{"sources": [{"model": "m1", "layer_range": [0, 1]}]},
                                     {"sources": [{"model": "m3", "layer_range": [0, 2],
                                                   "parameters": {"scale": [{"filter": "down_proj", "value": 0.0}]}}]}]},
}
# The random methods, one model at weight 1: merged - base is that model's sparsified task vector.
RANDOM = {
    "dare_linear": {"density": 0.6},
    "dare_linear_no_rescale": {"density": 0.6, "rescale": False},
    "dare_ties": {"density": 0.4},
    "della": {"density": 0.5, "epsilon": 0.2},
    "della_linear": {"density": 0.6},
}


def _random_recipe(name):
    params = dict(RANDOM[name])
    return {"merge_method": name.replace("_no_rescale", ""), "base_model": "base",
            "models": [{"model": "m1", "parameters": {"weight": 1.0}}], "parameters": params}


def _paths(recipe, dirs):
    """The recipe with each model name replaced by its directory."""
    if isinstance(recipe, dict):
        return {k: (str(dirs[v]) if k in ("model", "base_model") else _paths(v, dirs)) for k, v in recipe.items()}
    if isinstance(recipe, list):
        return [_paths(v, dirs) for v in recipe]
    return recipe


def _tensors(d: Path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="session")
def merged_by_both(tmp_path_factory):
    """recipe name -> (llmx's merged tensors, mergekit's), Hugging Face names, float32."""
    site, why = mergekit_ref.mergekit_dir()
    if site is None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("mergekit_parity")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    dirs = {"base": root / "base"}
    base.save_pretrained(dirs["base"])
    for i in (1, 2, 3):
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        dirs[f"m{i}"] = root / f"m{i}"
        model.save_pretrained(dirs[f"m{i}"])
    recipes = {**RECIPES, **{n: _random_recipe(n) for n in RANDOM}}
    jobs = []
    for name, recipe in recipes.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(_paths(recipe, dirs)))
        jobs.append((root / f"{name}.yaml", root / "mergekit" / name))
    mergekit_ref.run_recipes(site, jobs)

    from llmx.convert.hf import llmx_to_hf
    from llmx.merge.recipe import from_mergekit
    from llmx.merge.stream import inspect, merge

    before = os.environ.get("LLMX_CACHE")
    os.environ["LLMX_CACHE"] = str(root / "llmx_cache")  # the checkpoints' conversions, this session's own
    try:
        out = {}
        for name, (recipe_file, mergekit_out) in zip(recipes, jobs):
            recipe = from_mergekit(yaml.safe_load(recipe_file.read_text()), str(recipe_file))
            inputs = inspect(recipe, "test")
            merge(recipe, inputs, {i.name: Path(i.source.model_dir) for i in inputs}, root / "llmx" / name)
            llmx_to_hf(root / "llmx" / name, root / "llmx_hf" / name)
            out[name] = (_tensors(root / "llmx_hf" / name), _tensors(mergekit_out))
        out["base"] = _tensors(dirs["base"])
        out["m1"] = _tensors(dirs["m1"])
        return out
    finally:
        if before is None:
            del os.environ["LLMX_CACHE"]
        else:
            os.environ["LLMX_CACHE"] = before


def max_difference(ours: dict, theirs: dict) -> float:
    assert sorted(ours) == sorted(theirs)
    return max(float(np.abs(ours[n].astype(np.float64) - theirs[n]).max()) for n in theirs)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_tensor_equals_mergekits(name, merged_by_both):
    ours, theirs = merged_by_both[name]
    worst = max_difference(ours, theirs)
    print(f"{name}: max |llmx - mergekit| = {worst:.3g}")
    assert worst <= 1e-6, f"{name}: max |llmx - mergekit| = {worst:.3g}"


@pytest.mark.parametrize("name", list(RANDOM))
def test_random_drops_agree_statistically(name, merged_by_both):
    """Kept fraction within 0.02 of each other (about 19k entries), and the same rescale: with it the task
    vector keeps its L1 norm in every tensor, without it every kept entry is the model's own."""
    base, model = merged_by_both["base"], merged_by_both["m1"]
    params = RANDOM[name]
    rescale = params.get("rescale", True)
    for tool, merged in zip(("llmx", "mergekit"), merged_by_both[name]):
        kept = total = top_kept = top_total = 0
        for n, b in base.items():
            delta, got = (model[n] - b).astype(np.float64), (merged[n] - b).astype(np.float64)
            keep = got != 0
            kept, total = kept + keep.sum(), total + keep.size
            if rescale:
                np.testing.assert_allclose(np.abs(got).sum(), np.abs(delta).sum(), rtol=1e-4, err_msg=f"{tool} {n}")
            else:
                np.testing.assert_allclose(got[keep], delta[keep], atol=1e-6, err_msg=f"{tool} {n}")
            rows = np.abs(delta).reshape(delta.shape[0], -1) if delta.ndim > 1 else np.abs(delta)[None]
            big = rows >= np.median(rows, axis=1, keepdims=True)
            top_kept += keep.reshape(rows.shape)[big].sum()
            top_total += big.sum()
        fraction = kept / total
        print(f"{name} {tool}: kept {fraction:.4f}, of the larger half {top_kept / top_total:.4f}")
        assert abs(fraction - params["density"]) < 0.02, (tool, fraction)
        if name.startswith("della"):  # keep probabilities rise from density - eps to density + eps with magnitude
            eps = params.get("epsilon", 0.15)
            assert abs(top_kept / top_total - (params["density"] + eps / 2)) < 0.03, (tool, top_kept / top_total)
