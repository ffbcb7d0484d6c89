"""stage=merge: every method equals its formula computed here in numpy, identities, per-tensor
parameters, passthrough slices, streaming memory, and a merged tiny model that loads and generates."""
from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import closing_lines, empty_folders, launch, read_json  # noqa: E402
from merge_fixtures import NAMES, random_model  # noqa: E402

from llmx.merge.recipe import Recipe, check, from_mergekit  # noqa: E402
from llmx.merge.stream import inspect, merge  # noqa: E402
from llmx.merge.safetensors_io import Reader  # noqa: E402
from llmx.merge.methods import tensor_seed  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge_models")
    base = random_model(d / "base", 0)
    a = random_model(d / "a", 1, 0.1, base=base)
    b = random_model(d / "b", 2, 0.1, base=base)
    c = random_model(d / "c", 3, 0.1, base=base)
    return d, {"base": base, "a": a, "b": b, "c": c}


def run_recipe(recipe: Recipe, out: Path) -> Reader:
    inputs = inspect(check(recipe, "test"), "test")
    merge(recipe, inputs, {i.name: Path(i.source.model_dir) for i in inputs}, out)
    return Reader(out)


def merged(models, tmp_path, method, names=("a", "b", "c"), base=True, model_params=None, **params):
    d, _ = models
    r = Recipe(method=method, models=[str(d / n) for n in names], base_model=str(d / "base") if base else None,
               model_params=model_params or [{} for _ in names], params=params)
    return run_recipe(r, tmp_path / method)


def np_slerp(t, a, b):
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.sum(ua * ub), -1, 1))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def np_trim(d, density):  # top-k by magnitude, k = int(density * n) as mergekit
    k = int(density * d.size)
    thresh = np.sort(np.abs(d).ravel())[::-1][k - 1]
    return np.where(np.abs(d) >= thresh, d, 0)


def np_l1(x, kept):  # rescaled to the task vector's L1 norm
    return kept * np.abs(x).sum() / np.abs(kept).sum()


def np_ties(deltas, weights):
    w = [wi * di for wi, di in zip(weights, deltas)]
    sign = np.where(np.sum(w, axis=0) >= 0, 1.0, -1.0)
    agree = [np.sign(x) == sign for x in w]
    num = np.sum([x * m for x, m in zip(w, agree)], axis=0)
    den = np.sum([wi * m for wi, m in zip(weights, agree)], axis=0)
    return num / np.where(np.abs(den) < 1e-8, 1, den)


W = [0.5, 0.3, 0.2]


def test_linear_slerp_task_arithmetic(models, tmp_path):
    _, t = models
    out = merged(models, tmp_path, "linear", base=False, model_params=[{"weight": w} for w in W])
    for n in NAMES:
        np.testing.assert_allclose(out.get(n), sum(w * t[m][n] for w, m in zip(W, "abc")) / sum(W), rtol=1e-5, atol=1e-6)
    out = merged(models, tmp_path, "slerp", names=("a",), t=0.3)
    for n in NAMES:
        np.testing.assert_allclose(out.get(n), np_slerp(0.3, t["base"][n], t["a"][n]), rtol=1e-4, atol=1e-5)
    out = merged(models, tmp_path, "task_arithmetic", model_params=[{"weight": w} for w in W], normalize=False)
    for n in NAMES:
        expect = t["base"][n] + sum(w * (t[m][n] - t["base"][n]) for w, m in zip(W, "abc"))
        np.testing.assert_allclose(out.get(n), expect, rtol=1e-5, atol=1e-6)


def test_sparsifying_methods(models, tmp_path):
    _, t = models
    mp = [{"weight": w, "density": dd} for w, dd in zip(W, (0.5, 0.4, 0.6))]
    ties = merged(models, tmp_path, "ties", model_params=mp)
    dare = merged(models, tmp_path, "dare_linear", model_params=mp, seed=3)
    della = merged(models, tmp_path, "della", model_params=mp, seed=3, epsilon=0.1)
    crumbs = merged(models, tmp_path, "breadcrumbs", model_params=mp, gamma=0.1)
    stock = merged(models, tmp_path, "model_stock")
    for n in NAMES:
        b = t["base"][n].astype(np.float64)
        deltas = [t[m][n] - b for m in "abc"]
        # TIES: trim to each model's density, elect the sign by the weighted sum, disjoint mean
        np.testing.assert_allclose(ties.get(n), b + np_ties([np_trim(x, p["density"]) for x, p in zip(deltas, mp)], W),
                                   rtol=1e-4, atol=1e-5)
        # DARE: keep with probability density (seeded per tensor and model), L1 rescale, no normalizing (mergekit's
        # defaults)
        seed = tensor_seed(3, n)
        kept = [np_l1(x, x * (np.random.default_rng([seed, i]).random(x.shape) < p["density"]))
                for i, (x, p) in enumerate(zip(deltas, mp))]
        np.testing.assert_allclose(dare.get(n), b + sum(w * k for w, k in zip(W, kept)), rtol=1e-4, atol=1e-5)
        # DELLA: keep probability rises with the magnitude's rank in its row, from density-eps to density+eps
        kept = []
        for i, (x, p) in enumerate(zip(deltas, mp)):
            rows = x.reshape(1, -1) if x.ndim < 2 else x
            rank = np.argsort(np.argsort(np.abs(rows), axis=1), axis=1)
            prob = (p["density"] - 0.1) + 0.2 * rank / (rows.shape[1] - 1)
            keep = np.random.default_rng([seed, i]).random(x.shape) < prob.reshape(x.shape)
            kept.append(np_l1(x, x * keep))
        np.testing.assert_allclose(della.get(n), b + np_ties(kept, W), rtol=1e-4, atol=1e-5)
        # Breadcrumbs: drop the int(gamma n) largest and keep the next int(density n) (none when int(gamma n) is 0)
        kept = []
        for x, p in zip(deltas, mp):
            order = np.argsort(-np.abs(x).ravel(), kind="stable")
            m = np.zeros(x.size, bool)
            top = int(0.1 * x.size)
            if top:
                m[order[top:top + int(p["density"] * x.size)]] = True
            kept.append(x * m.reshape(x.shape))
        np.testing.assert_allclose(crumbs.get(n), b + sum(w * k for w, k in zip(W, kept)), rtol=1e-4, atol=1e-5)
        # Model Stock: t = N cos / (1 + (N-1) cos), cos the mean pairwise cosine of the task vectors
        flat = [x.ravel() for x in deltas]
        cos = np.mean([flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
                       for i in range(3) for j in range(i + 1, 3)])
        ts = 3 * cos / (1 + 2 * cos)
        np.testing.assert_allclose(stock.get(n), ts * np.mean([t[m][n] for m in "abc"], axis=0) + (1 - ts) * b,
                                   rtol=1e-4, atol=1e-5)


def test_identities_filters_and_slices(models, tmp_path):
    d, t = models
    same = run_recipe(Recipe("slerp", [str(d / "base")], str(d / "base"), [{}], {"t": 0.37}), tmp_path / "same")
    one = run_recipe(Recipe("linear", [str(d / "a")], None, [{"weight": 1.0}], {}), tmp_path / "one")
    for n in NAMES:
        np.testing.assert_allclose(same.get(n), t["base"][n], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(one.get(n), t["a"][n])
    # mergekit's per-tensor filters and gradients: t=0 on attention, t=1 elsewhere; then a layer gradient
    recipe = from_mergekit({"merge_method": "slerp", "base_model": str(d / "base"), "models": [{"model": str(d / "a")}],
                            "parameters": {"t": [{"filter": "self_attn", "value": 0.0}, {"value": 1.0}]}}, "recipe")
    filt = run_recipe(recipe, tmp_path / "filter")
    recipe = from_mergekit({"merge_method": "slerp", "base_model": str(d / "base"), "models": [{"model": str(d / "a")}],
                            "parameters": {"t": [0.0, 1.0]}}, "recipe")
    grad = run_recipe(recipe, tmp_path / "gradient")
    for n in NAMES:
        np.testing.assert_allclose(filt.get(n), t["base" if "self_attn" in n else "a"][n], rtol=1e-5, atol=1e-6)
        first = ".layers.1." not in n  # tensors outside the layers sit at the gradient's start, as in mergekit
        np.testing.assert_allclose(grad.get(n), t["base" if first else "a"][n], rtol=1e-5, atol=1e-6)
    # passthrough: layers [1, 2) of a, then [0, 2) of b -> three layers
    recipe = from_mergekit({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(d / "a"), "layer_range": [1, 2]}]},
        {"sources": [{"model": str(d / "b"), "layer_range": [0, 2]}]}]}, "recipe")
    deep = run_recipe(recipe, tmp_path / "deep")
    assert read_json(tmp_path / "deep" / "config.json")["num_hidden_layers"] == 3
    q = "self_attn.q_proj.weight"
    np.testing.assert_array_equal(deep.get(f"llama.layers.0.{q}"), t["a"][f"llama.layers.1.{q}"])
    np.testing.assert_array_equal(deep.get(f"llama.layers.2.{q}"), t["b"][f"llama.layers.1.{q}"])
    np.testing.assert_array_equal(deep.get("llama.embed_tokens.weight"), t["a"]["llama.embed_tokens.weight"])
    np.testing.assert_array_equal(deep.get("lm_head.weight"), t["b"]["lm_head.weight"])  # the last slice's, as mergekit


def test_streaming_memory(tmp_path):
    """Three models of 64 tensors of 1 MiB (TIES, which makes the most temporaries per tensor): the
    merge's peak Python/numpy allocation stays below one model's size (it depends on the tensor size,
    not on how many tensors a model has)."""
    names = {f"llama.layers.{i}.mlp.up_proj.weight": (256, 1024) for i in range(64)}
    base = random_model(tmp_path / "base", 0, names=names, config={"num_hidden_layers": 64})
    for i, m in enumerate("abc"):
        random_model(tmp_path / m, i + 1, 0.1, names=names, base=base, config={"num_hidden_layers": 64})
    del base
    model_bytes = 64 * 256 * 1024 * 4
    recipe = check(Recipe("ties", [str(tmp_path / m) for m in "abc"], str(tmp_path / "base"), [{"density": 0.5}] * 3, {}), "t")
    inputs = inspect(recipe, "t")
    tracemalloc.start()
    merge(recipe, inputs, {i.name: Path(i.source.model_dir) for i in inputs}, tmp_path / "out")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < model_bytes, f"peak {peak / 2**20:.1f} MiB for models of {model_bytes / 2**20:.0f} MiB"
    assert Reader(tmp_path / "out").shape("llama.layers.63.mlp.up_proj.weight") == (256, 1024)


def test_merged_tiny_model_loads_and_generates(tmp_path):
    """Two seeds of the tiny model, dare_ties over a third: the run writes model/ + merge.json, build_model
    loads exactly the merged tensors, and it generates."""
    import paddle
    from omegaconf import OmegaConf

    from llmx.engine.generate import greedy_generate
    from llmx.engine.model import build_model, build_tokenizer
    from helpers import compose

    m = compose().model
    tok = build_tokenizer(m)
    dirs = []
    for seed in (1, 2, 3):  # saved as paddle does by default (model_state.pdparams): merge converts them once
        model = build_model(m, tok, seed)
        if seed == 1:
            first_seed = {k: v.numpy() for k, v in model.state_dict().items()}
        out = tmp_path / f"seed{seed}"
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        dirs.append(str(out))
    run = tmp_path / "run"
    proc = launch("stage=merge", "stage.method=dare_ties", f"stage.models=[{dirs[0]},{dirs[1]}]",
                  "stage.weights=[0.7,0.3]", f"stage.base_model={dirs[2]}", "stage.density=0.6", f"hydra.run.dir={run}")
    assert f"  model_dir      {run / 'model'}" in proc.stdout.splitlines()
    assert closing_lines(proc.stdout) == [f"run dir: {run}  (summary.json, merge.json, llmx.log)"]
    assert empty_folders(run) == []
    record = read_json(run / "merge.json")
    assert [i["name"] for i in record["inputs"]] == [dirs[0], dirs[1], dirs[2]]
    assert all(len(i["sha256"]) == 64 for i in record["inputs"]) and record["method"] == "dare_ties"
    summary = read_json(run / "summary.json")
    assert summary["tensors"] == len(Reader(run / "model").names())
    m2 = OmegaConf.merge(m, {"name_or_path": str(run)})  # the run dir resolves to its merged model
    merged_model = build_model(m2, build_tokenizer(m2), 0)
    saved = Reader(run / "model")
    for k, v in merged_model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), saved.get(k))
    # a LoRA run as an input means its model (adapter merged onto its base): task arithmetic at weight 1 over
    # that base gives exactly the model build_model makes of the run
    lora = tmp_path / "lora"
    launch("stage=lora", f"model.name_or_path={dirs[0]}", "stage.train.max_steps=3", "stage.eval.enabled=false",
           "stage.train.progress_bar=false", f"hydra.run.dir={lora}")
    from llmx.stages.merge import materialize

    recipe = check(Recipe("task_arithmetic", [str(lora)], dirs[0], [{"weight": 1.0}], {}), "t")
    inputs = inspect(recipe, "t")
    merge(recipe, inputs, {i.name: materialize(i, m, tmp_path) for i in inputs}, tmp_path / "lora_merged")
    lora_model = build_model(OmegaConf.merge(m, {"name_or_path": str(lora)}), tok, 0)
    from_lora = Reader(tmp_path / "lora_merged")
    changed = 0
    for k, v in lora_model.state_dict().items():
        np.testing.assert_allclose(from_lora.get(k), v.numpy(), rtol=1e-6, atol=1e-7)
        changed += not np.array_equal(v.numpy(), first_seed[k])
    assert changed > 0  # the adapter did move weights

    prompt = tok("copy: dog")["input_ids"]
    out = greedy_generate(merged_model, tok, [prompt], 4, 1)
    logits = merged_model(input_ids=paddle.to_tensor([prompt]))
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    first = int(logits[0, -1].argmax())  # the first generated token is the argmax of the merged model's logits
    assert out[0][:1] == [first] or (first == tok.eos_token_id and out[0] == [])
