"""The stage contract and the run directory's life cycle, through `python launch.py` as a user runs it:
a stage from outside llmx, relaunching a finished run, continuing it, typos that leave nothing behind,
and `python -m llmx rerun --check`."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers import FAST, launch, llmx_command, read_json, read_jsonl, train_losses

from llmx.schema import asset_path
from llmx.experiment import Experiment

HELLO_STAGE = '''
"""A stage from outside llmx: counts letters of a repeated greeting, with paddle, in every rank."""
from dataclasses import dataclass

from llmx.errors import ConfigError


@dataclass
class Config:
    runner: str = "extstage.hello"
    greeting: str = "hello"
    repeat: int = 1


def validate(cfg):
    if cfg.stage.repeat < 1:
        raise ConfigError(f"stage.repeat={cfg.stage.repeat}: must be >= 1")


def prepare(cfg):
    return [cfg.stage.greeting] * cfg.stage.repeat


def run(cfg, ctx):
    import paddle

    letters = int(paddle.to_tensor([len(w) for w in ctx.inputs]).sum())
    ctx.experiment.log_metrics({"step": 0, "letters": letters})
    return {"stage": "hello", "letters": letters, "world_size": ctx.runtime.world_size}
'''
HELLO_CONF = "# Says hello: a stage from outside llmx.\nrunner: extstage.hello\ngreeting: hi\nrepeat: 1\n"


def test_a_stage_from_a_module_and_a_conf_file_alone(tmp_path):
    (tmp_path / "pkg" / "extstage").mkdir(parents=True)
    (tmp_path / "pkg" / "extstage" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "extstage" / "hello.py").write_text(HELLO_STAGE)
    (tmp_path / "conf" / "stage").mkdir(parents=True)
    (tmp_path / "conf" / "stage" / "hello.yaml").write_text(HELLO_CONF)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"))
    common = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=hello"]

    run = tmp_path / "run"
    proc = launch(*common, "stage.repeat=3", f"hydra.run.dir={run}", env=env)
    summary = read_json(run / "summary.json")
    memory = {k: summary.pop(k) for k in list(summary) if k.startswith("memory_")}  # every stage's measured peak
    assert summary == {"stage": "hello", "letters": 6, "world_size": 1}
    assert memory["memory_measured"] == "peak RSS above import baseline" and len(memory["memory_peak_gib_per_rank"]) == 1
    assert "memory_plan_gib" not in memory  # a plan is for training stages
    assert read_json(run / "status.json")["status"] == "ok" and "letters" in proc.stdout
    two = tmp_path / "two_ranks"  # the engine launches its ranks for any stage
    launch(*common, "parallel=dp2", f"hydra.run.dir={two}", env=env)
    summary = read_json(two / "summary.json")
    assert {k: v for k, v in summary.items() if not k.startswith("memory_")} == {"stage": "hello", "letters": 2,
                                                                               "world_size": 2}
    assert len(summary["memory_peak_gib_per_rank"]) == 2

    # its Config types and its validate() check the conf file's keys, as for llmx's own stages
    for bad, line in ((["stage.repeat=abc"], "llmx: config error: stage.repeat: Value 'abc' of type 'str' could not be converted to Integer"),
                      (["stage.repeat=0"], "llmx: config error: stage.repeat=0: must be >= 1")):
        proc = launch(*common, *bad, f"hydra.run.dir={tmp_path / 'bad'}", env=env, check=False)
        assert proc.returncode == 2 and proc.stderr.strip() == line, proc.stderr
    assert not (tmp_path / "bad").exists()


WEIGHTED_STAGE = '''
"""A training stage from outside llmx with a Trainer subclass of its own (loss scaled by a factor)."""
from dataclasses import dataclass, field

from llmx.schema import TrainConfig
from llmx.stages.sft import DataConfig


@dataclass
class Config:
    runner: str = "extstage.weighted"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    factor: float = 2.0


def prepare(cfg):
    from llmx.data.formats import read_sft

    return read_sft(cfg.stage.data.train)


def run(cfg, ctx):
    from paddlenlp.trainer import Trainer

    from llmx.data.sft import SftEncoder
    from llmx.engine.batching import PadCollator
    from llmx.engine.fit import fit
    from llmx.engine.model import build_model, build_tokenizer

    class WeightedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs)
            return (loss[0] * cfg.stage.factor, loss[1]) if return_outputs else loss * cfg.stage.factor

    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)
    encoder = SftEncoder(tokenizer, 128, 96)
    train = [encoder.encode(c) for c in ctx.inputs]
    trainer, summary = fit(cfg, ctx, model, train, None, PadCollator(tokenizer.pad_token_id), tokenizer,
                           trainer_base=WeightedTrainer)
    return {"stage": "weighted", "trainer": type(trainer).__name__, **summary}
'''


def test_a_stage_with_its_own_trainer_subclass_gets_llmx_checkpoints_and_metrics(tmp_path):
    """fit(trainer_base=...) puts llmx's mixin on any Trainer subclass: seeded order, token counts,
    metrics.jsonl, checkpoints marked complete by llmx. Its losses are the factor times plain SFT's."""
    (tmp_path / "pkg" / "extstage").mkdir(parents=True)
    (tmp_path / "pkg" / "extstage" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "extstage" / "weighted.py").write_text(WEIGHTED_STAGE)
    (tmp_path / "conf" / "stage").mkdir(parents=True)
    # naming its schema (registered from the search path) makes it as typed as llmx's own stages
    (tmp_path / "conf" / "stage" / "weighted.yaml").write_text(
        "# SFT loss times a factor.\ndefaults:\n  - /schema/stage/weighted@_here_\n  - _self_\n\n"
        "runner: extstage.weighted\nfactor: 3.0\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"))
    steps = ["stage.train.max_steps=4", "stage.train.logging_steps=1", "stage.train.save_steps=2", "stage.train.lr=1e-9"]
    run = tmp_path / "weighted"
    launch(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=weighted", *steps, *FAST, f"hydra.run.dir={run}",
           env=env)
    plain = tmp_path / "plain"
    launch(*steps, *FAST, "stage.eval.enabled=false", f"hydra.run.dir={plain}")
    summary = read_json(run / "summary.json")
    assert summary["trainer"] == "LlmxWeightedTrainer" and summary["steps"] == 4
    # lr ~0: the weights barely move, so each step's loss is 3x plain SFT's on the same batch
    assert [loss for _, loss in train_losses(run)] == pytest.approx([3 * loss for _, loss in train_losses(plain)], rel=1e-5)
    assert [r["tokens"] for r in read_jsonl(run / "metrics.jsonl")] == [r["tokens"] for r in read_jsonl(plain / "metrics.jsonl") if "loss" in r]
    assert [p.name for p in Experiment(run).complete_checkpoints()] == ["step-2", "step-4"]


SHORT = [*FAST, "stage.train.max_steps=20", "stage.train.save_steps=10", "stage.train.logging_steps=2",
         "stage.eval.enabled=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished short SFT run on a copy of the demo data (so a test can change the data afterwards)."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "train.jsonl"
    shutil.copy(asset_path("demo/sft_train.jsonl"), data)
    run = root / "run"
    launch(f"hydra.run.dir={run}", f"stage.data.train={data}", *SHORT)
    return run, data


def test_relaunching_a_finished_run_does_nothing_and_says_so(finished):
    run, data = finished
    before = (run / "metrics.jsonl").read_text()
    proc = launch(f"hydra.run.dir={run}", f"stage.data.train={data}", *SHORT)
    assert proc.stdout.strip().splitlines() == [
        f"{run} is complete (20 steps): nothing to do (raise stage.train.max_steps to continue it, "
        "or choose another hydra.run.dir)"]
    assert proc.stderr.strip() == "" and (run / "metrics.jsonl").read_text() == before


def test_a_finished_run_continues_to_more_steps(finished, tmp_path):
    """A raised max_steps continues from the last checkpoint (the final step is always saved)."""
    run = tmp_path / "continued"
    shutil.copytree(finished[0], run)
    launch(f"hydra.run.dir={run}", f"stage.data.train={finished[1]}", *SHORT, "stage.train.max_steps=30")
    summary = read_json(run / "summary.json")
    assert summary["resumed_from"] == "step-20" and summary["steps"] == 30
    assert [s for s, _ in train_losses(run)] == list(range(2, 31, 2))
    assert train_losses(run)[:10] == train_losses(finished[0])  # the first 20 steps kept as they were
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-30"


def test_a_typo_leaves_no_run_directory(tmp_path):
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"src": "1+1="}\n')
    for overrides in (["stage.train.lr=0"], ["model.overrides.hiden_size=8"], [f"stage.data.train={bad_data}"]):
        proc = launch(*overrides, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "outputs").exists(), overrides


def test_rerun_check_reproduces_and_names_the_first_differing_step(finished, tmp_path):
    run, data = finished
    same = tmp_path / "same"
    proc = llmx_command("rerun", str(run), "--check", "--into", str(same))
    assert proc.returncode == 0, proc.stderr
    assert "rerun: reproduced: all 10 logged losses equal" in proc.stdout
    assert train_losses(same) == train_losses(run)

    # one line of the training data changed (one that step 11 trains on): the rerun differs from step 12,
    # the first logged after it (seed 42's order: SeededBatchSampler)
    import numpy as np

    lines = data.read_text().splitlines(keepends=True)
    used = int(np.random.RandomState(42).permutation(len(lines))[10 * 16])
    row = json.loads(lines[used])
    lines[used] = json.dumps({"src": row["src"], "tgt": row["tgt"] + " changed"}) + "\n"
    data.write_text("".join(lines))
    changed = tmp_path / "changed"
    proc = llmx_command("rerun", str(run), "--check", "--into", str(changed))
    assert proc.returncode == 1
    assert train_losses(changed)[:5] == train_losses(run)[:5] and train_losses(changed)[5] != train_losses(run)[5]
    assert proc.stderr.strip().startswith("llmx: rerun differs: first at step 12: loss "), proc.stderr
