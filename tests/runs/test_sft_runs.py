"""End-to-end SFT runs through `python launch.py`, on CPU with the bundled tiny model."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import FAST, REPO, closing_lines, empty_folders, launch, read_json, read_jsonl, train_losses

RUN_FILES = [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "provenance.json",
             "metrics.jsonl", "summary.json", "samples.jsonl", "llmx.log", "checkpoints/latest", "model/config.json"]


def test_default_job_leaves_a_complete_run_dir_and_learns(default_job):
    """`python launch.py` with no overrides but the run dir: the README's main job (run once per session:
    the alignment and RL tests start from it)."""
    run, proc = default_job
    # The console: the run dir, the progress bars, the summary; libraries' logs and warnings only in llmx.log.
    console = (proc.stdout + proc.stderr).split("\n")  # a progress bar redraws its line with \r
    assert len(console) <= 40, "\n".join(console)
    assert console[0] == f"llmx sft: model=tiny parallel=single -> {run}"
    assert any(line.startswith("done in ") for line in console)
    assert f"  model_dir         {run / 'model'}" in console
    assert closing_lines(proc.stdout) == [
        f"run dir: {run}  (summary.json, metrics.jsonl, samples.jsonl, checkpoints/, visualdl/, llmx.log)",
        f"curves:  visualdl --logdir {run}",
        f"compare: python -m llmx diff {run} <another run>;  reproduce: python -m llmx rerun {run} --check"]
    assert empty_folders(run) == []
    assert "PaddleNLP" not in proc.stdout + proc.stderr and "Warning" not in proc.stdout + proc.stderr
    log = (run / "llmx.log").read_text()
    assert "Training completed" in log and "py.warnings" in log  # ... they went to llmx.log
    for name in RUN_FILES:
        assert (run / name).exists(), f"missing {name}"
    summary = read_json(run / "summary.json")
    assert summary["eval_loss"] < summary["eval_loss_before"] - 1.0, summary
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 64 and all(s["correct"] == (s["generated"] == s["target"].strip()) for s in samples)
    assert summary["exact_match"] == sum(s["correct"] for s in samples) / 64 > 0
    assert f"exact_match       {summary['exact_match']:.4g}" in proc.stdout
    prov = read_json(run / "provenance.json")
    assert prov["world_size"] == 1 and prov["seed"] == 42 and prov["devices"] == ["cpu"]
    assert prov["versions"]["paddlenlp"] == "3.0.0b4"
    assert "git_sha" in prov["code"] and prov["command"][-1] == "stage.eval.samples_to_log=64"
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(10, summary["steps"] + 1, 10))
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in rows)
    ckpt = run / "checkpoints" / (run / "checkpoints/latest").read_text().strip()
    assert ckpt.name == f"step-{summary['steps']}" and read_json(ckpt / "llmx_checkpoint.json")["step"] == summary["steps"]
    assert any(p.suffix == ".safetensors" for p in ckpt.iterdir())

    # the exported model and the last checkpoint load with plain PaddleNLP and hold the same weights
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(run / "model")
    restored = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = paddle.to_tensor([AutoTokenizer.from_pretrained(run / "model")("Q: add 2 + 3 =\nA:")["input_ids"]])
    with paddle.no_grad():
        a, b = exported(ids), restored(ids)
    a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
    assert a.shape[-1] == 512 and paddle.allclose(a, b).item()


SHORT = [*FAST, "stage.train.max_steps=30", "stage.train.save_steps=10", "stage.train.logging_steps=2",
         "stage.eval.enabled=false"]
_losses = train_losses


def test_token_counts_and_sigkill_resume_matches(tmp_path):
    a, killed = tmp_path / "a", tmp_path / "killed"  # (same seed, same losses: tests/runs/test_engine_runs.py, rerun --check)
    launch(f"hydra.run.dir={a}", *SHORT)
    assert len(_losses(a)) == 15
    # tokens/s counts exactly the real tokens of the batches trained on in each interval
    from paddlenlp.transformers import AutoTokenizer

    from llmx.schema import asset_path
    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.engine.trainer import SeededBatchSampler

    enc = SftEncoder(AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer")), 128, 96)
    lengths = [len(enc.encode(c)["input_ids"]) for c in read_sft(asset_path("demo/sft_train.jsonl"))]
    sampler = SeededBatchSampler(lengths, batch_size=16, seed=42)
    sampler.set_epoch(0)
    per_step = [sum(lengths[i] for i in batch) for batch in list(sampler)[:30]]
    logged = [r["tokens"] for r in read_jsonl(a / "metrics.jsonl") if "loss" in r]
    assert logged == [sum(per_step[k:k + 2]) for k in range(0, 30, 2)]

    proc = subprocess.Popen([sys.executable, "launch.py", f"hydra.run.dir={killed}", *SHORT], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    first = latest.read_text().strip()

    out = launch(f"hydra.run.dir={killed}", *SHORT)
    assert f"resuming from {killed / 'checkpoints' / first}" in out.stderr + out.stdout + (killed / "llmx.log").read_text()
    assert read_json(killed / "summary.json")["resumed_from"] == first
    resumed, reference = _losses(killed), _losses(a)
    assert [s for s, _ in resumed] == [s for s, _ in reference], "metrics.jsonl must continue without gaps or repeats"
    for (step, got), (_, want) in zip(resumed, reference):
        assert got == pytest.approx(want, abs=1e-6), f"step {step}"


def test_lora_trains_only_adapters_and_merge_matches(tmp_path):
    run = tmp_path / "lora"
    launch(f"hydra.run.dir={run}", "stage=lora", "stage.merge_adapter=true", "stage.train.max_steps=40",
           "stage.eval.num_samples=16", *FAST)
    summary = read_json(run / "summary.json")
    # LoRA A (in x r) and B (r x out) on each target projection of the tiny llama
    # (hidden 64, 4 heads / 2 kv heads of 16, intermediate 128, 2 layers), r=8.
    r, h, kv, ffn = 8, 64, 32, 128
    projections = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
                   "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, ffn), "mlp.up_proj": (h, ffn),
                   "mlp.down_proj": (ffn, h)}
    per_layer = sum(r * (i + o) for i, o in projections.values())
    assert summary["trainable_params"] == 2 * per_layer
    assert summary["eval_loss"] < summary["eval_loss_before"]
    # the saved adapter is those A and B matrices and nothing of the base (its tensors are read below)
    adapter_shapes = {f"llama.layers.{layer}.{name}.lora_{ab}": list(shape)
                      for layer in range(2) for name, (i, o) in projections.items()
                      for ab, shape in (("A", (i, r)), ("B", (r, o)))}
    assert [p.name for p in (run / "adapter").glob("lora_model_state*")] == ["lora_model_state.pdparams"]
    assert summary["base_model"] == str(run / "base_model")
    assert (run / "adapter/lora_config.json").exists()

    # base + adapter and the merged model compute the same logits (and the adapter did change the base's)
    check = f"""
import json, paddle
from paddlenlp.peft import LoRAModel
from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer
from llmx.data.formats import read_sft
from llmx.data.sft import SftEncoder
from llmx.schema import asset_path
from llmx.tokens import pad_batch
tok = AutoTokenizer.from_pretrained("{run}/adapter")
enc = SftEncoder(tok, 128, 96)
batch = pad_batch([enc.encode(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))[:16]], tok.pad_token_id)
inputs = dict(input_ids=paddle.to_tensor(batch["input_ids"]), attention_mask=paddle.to_tensor(batch["attention_mask"]))
base = AutoModelForCausalLM.from_pretrained("{run}/base_model")
base.eval()
with paddle.no_grad():
    plain = base(**inputs)[0] if isinstance(base(**inputs), tuple) else base(**inputs).logits
    with_adapter = LoRAModel.from_pretrained(base, "{run}/adapter")
    with_adapter.eval()
    a = with_adapter(**inputs)
    merged = AutoModelForCausalLM.from_pretrained("{run}/model")
    merged.eval()
    b = merged(**inputs)
a, b = (x[0] if isinstance(x, tuple) else x.logits for x in (a, b))
saved = paddle.load("{run}/adapter/lora_model_state.pdparams")
print(json.dumps({{"merged_vs_adapter": float((a - b).abs().max()), "adapter_vs_base": float((a - plain).abs().max()),
                  "scale": float(a.abs().max()), "adapter_shapes": {{k: list(v.shape) for k, v in saved.items()}}}}))
"""
    out = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = read_json_line(out.stdout)
    assert result["merged_vs_adapter"] < 1e-5 * result["scale"] and result["adapter_vs_base"] > 1e-2, result
    assert result["adapter_shapes"] == adapter_shapes


def read_json_line(stdout: str) -> dict:
    import json

    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_prefix_tuning_trains_and_evaluates(tmp_path):
    run = tmp_path / "prefix"
    launch(f"hydra.run.dir={run}", "stage=prefix", "stage.train.max_steps=40", "stage.eval.num_samples=16", *FAST)
    summary = read_json(run / "summary.json")
    # 16 prefix tokens x (key + value) x 2 layers x 2 kv heads x head dim 16
    assert summary["trainable_params"] == 16 * 2 * 2 * 2 * 16
    assert summary["eval_loss"] < summary["eval_loss_before"]
    assert "exact_match" in summary and len(read_jsonl(run / "samples.jsonl")) == 8
    assert (run / "adapter/prefix_config.json").exists()


def test_qwen2_tiny_lora(tmp_path):
    run = tmp_path / "qwen2"
    launch(f"hydra.run.dir={run}", "model=qwen2", "model.size=tiny", "stage=lora", "stage.train.max_steps=20",
           "stage.eval.num_samples=8", *FAST)
    summary = read_json(run / "summary.json")
    assert summary["steps"] == 20 and summary["eval_loss"] < summary["eval_loss_before"]
    config = read_json(run / "base_model/config.json")
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["hidden_size"] == 64


@pytest.mark.parametrize("stage", ["lora", "prefix"])
def test_adapter_runs_resume_from_their_checkpoints(tmp_path, stage):
    """Adapter checkpoints use other formats than full ones; a re-launch must still continue exactly."""
    run = tmp_path / stage
    args = [f"hydra.run.dir={run}", f"stage={stage}", *SHORT, "stage.train.max_steps=20"]
    launch(*args)
    reference = _losses(run)
    # pretend the run died right after its first checkpoint
    shutil.rmtree(run / "checkpoints/step-20")
    (run / "checkpoints/latest").write_text("step-10\n")
    (run / "summary.json").unlink()
    launch(*args)
    assert read_json(run / "summary.json")["resumed_from"] == "step-10"
    resumed = _losses(run)
    assert [s for s, _ in resumed] == [s for s, _ in reference]
    for (step, got), (_, want) in zip(resumed, reference):
        assert got == pytest.approx(want, abs=1e-6), f"step {step}"
