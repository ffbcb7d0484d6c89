"""Every PEFT method on the tiny default model: rsLoRA, PiSSA, MoRA, MoSLoRA, LoRA+, LoKr, VeRA, ReFT.

One process trains them all in turn (tests/runs/run_matrix.py, through llmx's sft runner), 20 steps
each. Each run is checked for what its method promises: only its own parameters train (counted against
the method's formula for the tiny shapes), the loss falls, the saved adapter reloaded through the run
directory computes the run's own eval loss, and the merged model computes base + adapter. dp2 runs of
LoRA+ and LoKr (one launch), tp2 rsLoRA and pp2 LoRA+ match one process step by step.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from helpers import REPO, launch, read_json, run_matrix, train_losses

COMMON = ["stage.train.max_steps=20", "stage.train.logging_steps=1", "stage.train.save_steps=20",
          "stage.train.batch_size=8", "stage.train.progress_bar=false", "stage.eval.num_samples=8"]
METHODS = {  # name -> overrides
    "rslora": ["stage=lora", "stage.peft.variant=rslora", "stage.merge_adapter=true"],
    "pissa": ["stage=lora", "stage.peft.variant=pissa", "stage.merge_adapter=true"],
    "mora": ["stage=lora", "stage.peft.variant=mora", "stage.merge_adapter=true"],
    "moslora": ["stage=lora", "stage.peft.variant=moslora", "stage.merge_adapter=true"],
    "loraplus": ["stage=lora", "stage.peft.lora_plus_ratio=16", "stage.merge_adapter=true"],
    "lokr": ["stage=lokr", "stage.merge_adapter=true"],
    "vera": ["stage=vera", "stage.merge_adapter=true"],
    "reft": ["stage=reft"],
    "prefix": ["stage=prefix"],
}
MERGEABLE = [m for m, o in METHODS.items() if "stage.merge_adapter=true" in o]

# The tiny llama: hidden 64, 4 heads / 2 KV heads of 16 (k, v: 32 wide), intermediate 128, 2 layers.
H, LAYERS = 64, 2
BASE = 139584  # its parameters (vocab 512 x 64 embeddings and head, 2 decoder layers, final norm)
TARGETS = [(H, H), (H, 32), (H, 32), (H, H), (H, 128), (H, 128), (128, H)]  # (in, out): q k v o gate up down


def _lora(r=8):
    return sum(r * (i + o) for i, o in TARGETS)


def _mora(r=8):  # one square matrix per target, of the rank MoRA derives from r: sqrt((in + out) r), even
    return sum((int(math.sqrt((i + o) * r) + 0.5) // 2 * 2) ** 2 for i, o in TARGETS)


def _split(d):  # LoKr's split of a dimension: d = m * n with m the largest divisor <= sqrt(d)
    m = max(k for k in range(1, int(math.isqrt(d)) + 1) if d % k == 0)
    return m, d // m


def _lokr(dim=8):  # W1 (out_m x in_m) kron W2 (out_n x in_n, low-rank only when dim < max/2)
    total = 0
    for i, o in TARGETS:
        (im, i_n), (om, on) = _split(i), _split(o)
        total += om * im + (on * dim + dim * i_n if dim < max(on, i_n) / 2 else on * i_n)
    return total


FORMULAS = {
    "rslora": _lora(), "pissa": _lora(), "loraplus": _lora(), "mora": _mora(),
    "moslora": _lora() + len(TARGETS) * 8 * 8,  # plus an r x r mixer per target
    "lokr": _lokr(),
    "vera": sum(8 + o for _, o in TARGETS),  # d (r) and b (out) per target
    "reft": 2 * H * 4 + 4,  # LoReFT per intervened layer: R (h x r), W (h x r) and its bias (r)
    "prefix": 16 * 2 * 2 * 16,  # per layer: 16 prefix tokens x (key, value) x 2 KV heads x head dim 16
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("peft")
    return run_matrix({name: [*overrides, *COMMON] for name, overrides in METHODS.items()}, out)


@pytest.mark.parametrize("method", list(METHODS))
def test_only_the_methods_parameters_train_and_the_loss_falls(runs, method):
    summary = read_json(runs / method / "summary.json")
    assert summary["trainable_params"] == LAYERS * FORMULAS[method]
    assert summary["peft_method"] == {"loraplus": "lora"}.get(method, method)
    frozen = LAYERS * _lora() if method == "vera" else 0  # VeRA's frozen rank-8 pair per target
    assert summary["total_params"] == BASE + frozen + summary["trainable_params"]
    assert summary["eval_loss"] < summary["eval_loss_before"] - 1e-3
    losses = [loss for _, loss in train_losses(runs / method)]
    assert len(losses) == 20 and sum(losses[-5:]) < sum(losses[:5])
    adapter = runs / method / "adapter"
    assert summary["adapter_bytes"] == sum(f.stat().st_size for f in adapter.iterdir() if f.is_file())
    assert not any(f.suffix == ".safetensors" and "model" in f.name for f in adapter.iterdir())  # no base weights


def test_pissa_and_vera_start_from_the_base_model(runs):
    """LoRA's B starts at zero, so its first eval is the base's; PiSSA and VeRA move the top singular
    pair of each weight into the adapter and keep the residual: the same function at the start."""
    base = read_json(runs / "rslora" / "summary.json")["eval_loss_before"]
    for method in ("pissa", "vera"):
        assert read_json(runs / method / "summary.json")["eval_loss_before"] == pytest.approx(base, rel=1e-6)


CHECK = r"""
import json, sys
import numpy as np, paddle
sys.path.insert(0, "tests")
from helpers import compose, token_nll
from llmx.schema import asset_path
from llmx.data.formats import read_sft
from llmx.data.sft import SftEncoder
from llmx.engine.batching import PadCollator
from llmx.engine.model import build_model, build_tokenizer
from llmx.engine.reft import ReftCollator

out, runs = {}, sys.argv[1]
for method, mergeable in json.loads(sys.argv[2]).items():
    cfg = compose(f"model.name_or_path={runs}/{method}/adapter")  # the adapter names its base
    tok = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, seed=0, keep_adapter=True)
    model.eval()
    enc = SftEncoder(tok, 128, 96)
    examples = [enc.encode(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))]
    collate = PadCollator(tok.pad_token_id)
    if method == "reft":
        collate = ReftCollator(collate, model)
    nll, tokens, logits = 0.0, 0, None
    with paddle.no_grad():
        for start in range(0, len(examples), 16):
            batch = {k: v for k, v in collate(examples[start:start + 16]).items()
                     if k in ("input_ids", "attention_mask", "labels", "intervention_locations")}
            result = model(**batch)
            s, n = token_nll(result[1].astype("float32").numpy(), batch["labels"].numpy())
            nll, tokens = nll + s, tokens + n
            if logits is None:
                logits = result[1].numpy()
                first = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        row = {"eval_loss": nll / tokens}  # the token mean over the eval file, as the Trainer's evaluate
        if not mergeable:  # llmx's engine without a KV cache (RecomputeRunner) vs PaddleNLP's generate
            from llmx.engine.generate import greedy_generate
            from llmx.infer.build import dynamic_engine
            from llmx.infer.sampling import SamplingParams

            prompts = [enc.prompt_for_generation(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))[:12]]
            engine = dynamic_engine(model, tok, max_batch=4)
            ours = [r.tokens for r in engine.generate(prompts, SamplingParams(max_new_tokens=8, ignore_eos=True))]
            theirs = greedy_generate(model, tok, prompts, 8, 12)
            row["engine_equals_generate"] = all(a[:len(b)] == b for a, b in zip(ours, theirs))
        if mergeable:
            merged = build_model(compose(f"model.name_or_path={runs}/{method}/model").model, tok, seed=0)
            merged.eval()
            other = merged(**first)
            other = (other[0] if isinstance(other, tuple) else other.logits).numpy()
            row["merged_vs_adapter"] = float(np.abs(other - logits).max() / np.abs(logits).max())
    out[method] = row
print(json.dumps(out))
"""


def test_saved_adapters_reload_and_merge(runs):
    """Each adapter directory, given as model.name_or_path, loads onto the base it names (llmx.sources): the
    run's own eval loss comes back, and where the method folds into the weights the merged model computes
    the same; where it does not (prefix, ReFT), llmx's inference engine generates what PaddleNLP's
    generate does (the first 8 greedy tokens, up to an eos)."""
    import json

    methods = {m: m in MERGEABLE for m in METHODS}
    proc = subprocess.run([sys.executable, "-c", CHECK, str(runs), json.dumps(methods)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for method in METHODS:
        want = read_json(runs / method / "summary.json")["eval_loss"]
        assert result[method]["eval_loss"] == pytest.approx(want, rel=1e-5), method
        if method in MERGEABLE:
            assert result[method]["merged_vs_adapter"] < 1e-5, method
        else:
            assert result[method]["engine_equals_generate"], method


def test_vera_trains_its_scaling_vectors(runs):
    import paddle

    state = paddle.load(str(runs / "vera" / "adapter" / "vera_model_state.pdparams"))
    vectors = {k: v for k, v in state.items() if k.endswith(("vera_b", "vera_d"))}
    assert len(vectors) == 2 * LAYERS * len(TARGETS) and len(state) == len(vectors)  # only b and d are saved
    assert min(float(abs(v.numpy() - 1).max()) for v in vectors.values()) > 1e-4  # every one moved from 1


def test_lora_plus_gives_b_ratio_times_the_learning_rate():
    """The B matrices' learning rate is lora_plus_ratio x A's: one AdamW step (the Trainer's optimizer) of
    a LoRA+ model moves every B exactly `ratio` times as far as plain LoRA's does from the same state."""
    import numpy as np
    import paddle

    from helpers import compose
    from llmx.engine.model import build_model, build_tokenizer
    from llmx.engine.peft import wrap_peft

    moved = {}
    for ratio in (1, 16):
        cfg = compose("stage=lora", f"stage.peft.lora_plus_ratio={ratio}")
        tok = build_tokenizer(cfg.model)
        model = wrap_peft(build_model(cfg.model, tok, seed=0), cfg, base_ref=None)
        params = [p for p in model.parameters() if not p.stop_gradient]
        for name, p in model.get_trainable_state_dict().items():  # B = 0 gives A no gradient: start B off zero
            if name.endswith("lora_B"):
                p.set_value(paddle.full(p.shape, 0.01))
        before = {n: p.numpy().copy() for n, p in model.get_trainable_state_dict().items()}
        opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=params, weight_decay=0.0)
        ids = paddle.to_tensor(np.arange(1, 17, dtype="int64")[None])
        model(input_ids=ids, labels=ids)[0].backward()
        opt.step()
        moved[ratio] = {n: p.numpy() - before[n] for n, p in model.get_trainable_state_dict().items()}
    for name, delta in moved[16].items():
        want = 16 if name.endswith("lora_B") else 1
        big = np.abs(moved[1][name]) > 1e-6  # Adam's first step is lr * g / (|g| + eps): skip g ~ eps
        assert big.any() and np.allclose(delta[big], want * moved[1][name][big], rtol=1e-3), name


@pytest.mark.slow
@pytest.mark.parametrize("layout,methods", [("dp2", ["loraplus", "lokr"]), ("tp2", ["rslora"]), ("pp2", ["loraplus"])])
def test_layouts_match_one_process(layout, methods, runs, tmp_path):
    """Data parallelism for every method (here LoRA+ and LoKr); tensor and pipeline parallelism for the LoRA
    variants PaddleNLP's parallel LoRA layers support (rsLoRA, LoRA+; the rest are refused: tests/quick)."""
    par = run_matrix({m: [*METHODS[m], *COMMON, f"parallel={layout}", "stage.train.max_steps=3", "stage.train.save_steps=3",
                          "stage.eval.enabled=false", "stage.merge_adapter=false"] for m in methods},
                     tmp_path, processes=2)
    for method in methods:
        single = train_losses(runs / method)[:3]
        assert [s for s, _ in train_losses(par / method)] == [1, 2, 3]
        for (step, got), (_, want) in zip(train_losses(par / method), single):
            assert got == pytest.approx(want, rel=1e-6), (method, step)


def test_stage_infer_runs_an_adapter_that_does_not_merge(runs, tmp_path):
    """ReFT acts on hidden states at prompt positions: `stage=infer` on its run directory keeps the adapter
    on the base (no KV cache) and answers every prompt, in input order."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"src": q}) + "\n" for q in ("2+3=", "7+1=", "4+4=")))
    out = tmp_path / "out.jsonl"
    launch(f"hydra.run.dir={tmp_path / 'infer'}", "stage=infer", f"model.name_or_path={runs / 'reft'}",
           f"stage.input={prompts}", f"stage.output={out}", "stage.max_new_tokens=4", "stage.progress_bar=false")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["src"] for r in rows] == ["2+3=", "7+1=", "4+4="]
    assert all(1 <= r["generated_tokens"] <= 4 and r["finish_reason"] in ("stop", "length") for r in rows)
