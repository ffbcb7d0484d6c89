"""Parallel layouts on CPU over gloo, started the way a user starts them: `python launch.py
parallel=X` from a plain shell, which launches the processes itself (llmx/launcher.py).

Every layout runs the same config as the single-process reference: batch 4, grad_accum 2,
so the global batch is 8 everywhere. Data-parallel replicas (dp, sharding) each take one of
the two micro-batches of a step, and the pipeline takes them as its two micro-batches, so
every layout sums the very same micro-batch losses as one process and the logged losses
must agree to 1e-5 relative. The compatibility layer's counters (one file per rank) show
that the parallel path really ran.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import FAST, REPO, config_error, launch, read_json, read_jsonl, token_mean_eval_loss, train_losses

STEPS = 3
CORES = len(os.sched_getaffinity(0))  # runtime.threads=auto shares them among the ranks of a node
# llmx's kernels run in one tensor/pipeline rank only (llmx.engine.model): every side runs Paddle's composed ops,
# so the comparison is of the layouts alone (tests/runs/test_ops.py compares the kernels with the composed ops).
COMMON = [*FAST, "model.fused_ops=off", f"stage.train.max_steps={STEPS}", "stage.train.logging_steps=1", "stage.train.batch_size=4",
          "stage.train.grad_accum=2", f"stage.train.save_steps={STEPS}", "stage.eval.enabled=false"]
# tp/pp runs also evaluate (pp: loss only, a pipeline cannot generate) and export the merged model
WITH_EVAL = ["stage.eval.enabled=true", "stage.eval.num_samples=4", "stage.eval.max_new_tokens=4"]


def _losses(run) -> list[float]:
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "rank 0 alone writes metrics.jsonl"
    return [r["loss"] for r in rows]


def _counters(run, world: int) -> list[dict]:
    return [read_json(run / f"cpu_parallel_counters.rank{r}.json") for r in range(world)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("parallel") / "single"
    launch(f"hydra.run.dir={run}", *COMMON)
    assert not list(run.glob("cpu_parallel_counters*")), "the compatibility layer stays off in one process"
    prov = read_json(run / "provenance.json")
    # idle OpenMP threads sleep (llmx.devices.idle_threads_sleep), as launch.py sets before paddle loads
    assert prov["threads_per_rank"] == CORES and prov["omp_wait_policy"] == "PASSIVE"
    return run


def test_one_thread_gives_the_losses_of_every_core(tmp_path, reference):
    """The tiny model's losses are bit for bit those of every core. (Not so at real shapes: with the real
    135M checkpoint the first step's loss moved in the 6th digit, 3.47804546 at 1 thread vs 3.47805429
    at 2, as the math library sums a large product's blocks in another order.)"""
    run = tmp_path / "one_thread"
    launch(f"hydra.run.dir={run}", "runtime.threads=1", *COMMON)
    assert read_json(run / "provenance.json")["threads_per_rank"] == 1
    assert _losses(run) == _losses(reference)


def _run(tmp_path, layout: str, *extra: str):
    run = tmp_path / layout
    launch(f"hydra.run.dir={run}", f"parallel={layout}", *COMMON, *extra)
    return run


def _check_common(run, reference, world: int, rel: float = 1e-5) -> list[dict]:
    assert _losses(run) == pytest.approx(_losses(reference), rel=rel)
    prov = read_json(run / "provenance.json")
    assert prov["world_size"] == world and prov["threads_per_rank"] == max(1, CORES // world)
    assert sorted(p.name for p in (run / "launch_logs").glob("workerlog.*")) == [f"workerlog.{r}" for r in range(world)]
    assert "starting %d CPU (gloo) processes" % world in (run / "llmx.log").read_text()
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r] == list(range(1, STEPS + 1))
    return _counters(run, world)


@pytest.mark.parametrize("layout", ["dp2", "sharding_stage1", "sharding_stage2"])
def test_data_parallel_layouts_match_one_process(tmp_path, reference, layout):
    counters = _check_common(_run(tmp_path, layout), reference, 2)
    for c in counters:
        if layout == "dp2":  # DataParallel armed its (C++) gradient all-reduce for every micro-batch
            assert c["dp.grad_sync_forward"] == STEPS
        else:  # each rank reduces gradients to the parameters' owners and broadcasts its updates
            assert c["collective.reduce"] >= STEPS and c["collective.broadcast"] >= STEPS
        if layout == "sharding_stage2":
            assert c["sharding.stage2_wrap"] == 1


def _generations(model_dir, n: int) -> list[str]:
    """Greedy answers of a saved model, in this (single) process, to the first n eval prompts."""
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from llmx.schema import asset_path
    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.engine.generate import greedy_generate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    encoder = SftEncoder(tokenizer, 128, 96)
    prompts = [encoder.prompt_for_generation(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))[:n]]
    outputs = greedy_generate(model, tokenizer, prompts, 4, 16)
    return [tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip() for ids in outputs]


@pytest.fixture(scope="module")
def model_parallel_runs(tmp_path_factory, reference):
    base = tmp_path_factory.mktemp("model_parallel")
    return {layout: _run(base, layout, *WITH_EVAL) for layout in ("tp2", "pp2")}


def test_tensor_parallel_matches_one_process(model_parallel_runs, reference):
    run = model_parallel_runs["tp2"]
    counters = _check_common(run, reference, 2)
    for c in counters:  # the vocab-parallel embedding, column/row-parallel linears and loss ran on both ranks
        for op in ("mp.c_embedding", "mp.c_identity", "mp.allreduce", "mp.c_softmax_with_cross_entropy"):
            assert c[op] > 0, (op, c)
    # the tensor-parallel model generates what the merged model generates in one process
    samples = read_jsonl(run / "samples.jsonl")
    assert [s["generated"] for s in samples] == _generations(run / "model", len(samples))
    assert read_json(run / "summary.json")["exact_match"] == sum(s["correct"] for s in samples) / len(samples)


def test_pipeline_parallel_matches_one_process(model_parallel_runs, reference):
    run = model_parallel_runs["pp2"]
    counters = _check_common(run, reference, 2)
    first, last = counters
    assert first["collective.send"] > 0 and last["collective.recv"] > 0  # activations forward ...
    assert last["collective.send"] > 0 and first["collective.recv"] > 0  # ... and gradients back
    summary = read_json(run / "summary.json")
    assert "eval_loss" in summary and "exact_match" not in summary


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_model_parallel_checkpoints_load_into_one_process(model_parallel_runs, reference, layout):
    """The unified checkpoint merges tensor-parallel shards and names pipeline stages' weights as in
    the single model: a plain from_pretrained loads it and evaluates like the single run's checkpoint."""
    run = model_parallel_runs[layout]
    ckpt = run / "checkpoints" / f"step-{STEPS}"
    config = read_json(ckpt / "config.json")
    assert config["architectures"] == ["LlamaForCausalLM"]
    got, want = token_mean_eval_loss(ckpt), token_mean_eval_loss(reference / "checkpoints" / f"step-{STEPS}")
    assert got == pytest.approx(want, rel=1e-5)
    assert token_mean_eval_loss(run / "model") == pytest.approx(got, rel=1e-6)  # the exported model: the same weights
    # the run's own eval loss is the token mean over the eval file, however the layout batches it
    assert read_json(run / "summary.json")["eval_loss"] == pytest.approx(got, rel=1e-5)


def test_pretrained_weights_are_split_by_the_loader(tmp_path, reference):
    """With model.name_or_path PaddleNLP's loader splits the weights for tensor parallelism."""
    pretrained = [f"model.name_or_path={reference / 'model'}"]
    single = tmp_path / "single"
    launch(f"hydra.run.dir={single}", *COMMON, *pretrained)
    run = _run(tmp_path, "tp2", *pretrained)
    assert _losses(run) == pytest.approx(_losses(single), rel=1e-5)
    assert _losses(single)[0] < _losses(reference)[0]  # it did start from the trained weights
    assert "split from " + str(reference / "model") in (run / "llmx.log").read_text()


DEFAULT_BATCH = [*FAST, "stage.train.max_steps=6", "stage.train.logging_steps=1", "stage.train.save_steps=100",
                 "stage.eval.enabled=false"]


def test_a_step_is_the_mean_over_its_target_tokens_however_the_batch_is_cut(tmp_path):
    """The default batch (16 x grad_accum 1) one process; the same cut as 4 x 4; and split over dp2, whose
    replicas each average their own half with other numbers of target tokens: the same losses, as the
    loss is the mean over the global batch's target tokens (the gradient-accumulation normalisation bug)."""
    runs = {name: tmp_path / name for name in ("single", "accum", "dp2")}
    launch(f"hydra.run.dir={runs['single']}", *DEFAULT_BATCH)
    launch(f"hydra.run.dir={runs['accum']}", *DEFAULT_BATCH, "stage.train.batch_size=4", "stage.train.grad_accum=4")
    launch(f"hydra.run.dir={runs['dp2']}", *DEFAULT_BATCH, "parallel=dp2")
    want = [loss for _, loss in train_losses(runs["single"])]
    assert len(want) == 6
    for name in ("accum", "dp2"):
        assert [loss for _, loss in train_losses(runs[name])] == pytest.approx(want, rel=1e-6), name


def test_joins_an_outer_launcher(tmp_path, reference):
    """`python -m paddle.distributed.launch launch.py ...`: every rank joins (no second launch);
    the user names the run dir (each rank would otherwise stamp its own time)."""
    run = tmp_path / "joined"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_level", "WARNING", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "logs"), "launch.py", f"hydra.run.dir={run}", "parallel=dp2", *COMMON]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)  # no PADDLE_DISTRI_BACKEND
    assert proc.returncode == 0, (tmp_path / "logs" / "workerlog.0").read_text()[-3000:]
    assert _losses(run) == pytest.approx(_losses(reference), rel=1e-5)
    assert not (run / "launch_logs").exists() and "starting" not in (run / "llmx.log").read_text()
    assert all(c["dp.grad_sync_forward"] == STEPS for c in _counters(run, 2))


def test_world_must_match_an_outer_launcher(tmp_path, monkeypatch):
    """Under paddle.distributed.launch the layout must use exactly the processes it started."""
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    line = config_error("parallel=tp2pp2", tmp_path=tmp_path)
    assert line == "llmx: config error: parallel: dp*tp*pp*sharding = 4 but 2 processes (dp=1 tp=2 pp=2 sharding=1)"


def test_spawning_parent_imports_no_paddle():
    code = "import sys, llmx.run, llmx.launcher; print(sorted(m for m in ('paddle', 'paddlenlp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


FAILING_STAGE = '''
"""Rank 1 fails after the ranks formed their groups; rank 0 waits for it in a collective."""
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Config:
    runner: str = "extfail.boom"


def run(cfg, ctx):
    import paddle.distributed as dist

    if ctx.runtime.rank == 1:
        Path(ctx.experiment.dir, "failed_at").write_text(repr(time.time()))
        raise ValueError("rank 1 cannot go on")
    dist.barrier()  # without the launcher's watch this would wait for gloo's timeout
    return {}
'''


def test_a_failing_rank_ends_the_run_within_seconds_naming_its_error(tmp_path):
    (tmp_path / "pkg" / "extfail").mkdir(parents=True)
    (tmp_path / "pkg" / "extfail" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "extfail" / "boom.py").write_text(FAILING_STAGE)
    (tmp_path / "conf" / "stage").mkdir(parents=True)
    (tmp_path / "conf" / "stage" / "boom.yaml").write_text("# Fails in rank 1.\nrunner: extfail.boom\n")
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"))
    proc = launch(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=boom", "parallel=dp2", f"hydra.run.dir={run}",
                  env=env, check=False)
    ended = time.time()
    assert proc.returncode != 0
    assert ended - float((run / "failed_at").read_text()) < 30, "the other rank should not wait for gloo's timeout"
    assert proc.stderr.strip().splitlines() == [
        f"llmx: launch error: rank 1 of 2 failed: ValueError: rank 1 cannot go on (its log: {run}/launch_logs/workerlog.1)"]
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
