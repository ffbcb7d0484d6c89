"""Pretraining end to end on the bundled data: learns, resumes, continues; every data-parallel layout trains
on exactly the samples of one process."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import FAST, launch, read_json, read_jsonl, train_losses

PRETRAIN = ["stage=pretrain", *FAST, "stage.train.max_steps=40", "stage.train.logging_steps=5",
            "stage.train.save_steps=20", "stage.eval.samples=64"]


def test_pretrain_learns_checkpoints_resumes_and_continues(tmp_path):
    run = tmp_path / "run"
    launch(f"hydra.run.dir={run}", *PRETRAIN)
    summary = read_json(run / "summary.json")
    assert summary["eval_loss"] < summary["eval_loss_before"] - 1.0, summary
    assert summary["train_samples"] == 40 * 16 and summary["index_cache"] in ("built", "reused")
    losses = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in losses] == list(range(5, 41, 5))

    # a run killed after its first checkpoint (no final checkpoint, no summary, no status) resumes with
    # the same losses as the uninterrupted run
    shutil.rmtree(run / "checkpoints/step-40")
    (run / "checkpoints/latest").write_text("step-20\n")
    (run / "summary.json").unlink()
    (run / "status.json").unlink()
    launch(f"hydra.run.dir={run}", *PRETRAIN)
    resumed = read_json(run / "summary.json")
    assert resumed["resumed_from"] == "step-20" and resumed["index_cache"] == "reused"
    again = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in again] == [s for s, _ in losses]
    assert np.allclose([x for _, x in again], [x for _, x in losses], atol=1e-6)

    # continue training from the exported weights: it starts where the first run ended
    cont = tmp_path / "continued"
    launch(f"hydra.run.dir={cont}", *PRETRAIN, "stage.train.max_steps=5", f"model.name_or_path={run / 'model'}",
           "stage.continue_training=true")
    assert read_json(cont / "summary.json")["eval_loss_before"] == pytest.approx(summary["eval_loss"], rel=1e-5)


LAYOUT_RUN = ["stage=pretrain", *FAST, "stage.train.max_steps=4", "stage.train.logging_steps=1",
              "stage.train.save_steps=100", "stage.eval.enabled=false", "stage.train.batch_size=8",
              "stage.train.grad_accum=2"]


@pytest.fixture(scope="module")
def single_pretrain(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain_layouts") / "single"
    launch(f"hydra.run.dir={run}", *LAYOUT_RUN)
    return run


@pytest.mark.parametrize("layout", ["dp2", "sharding_stage1"])
def test_data_parallel_pretraining_trains_on_the_samples_of_one_process(tmp_path, single_pretrain, layout):
    """The sample index holds the samples the steps consume whatever the layout (llmx.layout), so
    two replicas see, step by step, exactly the samples one process sees: equal losses."""
    run = tmp_path / layout
    launch(f"hydra.run.dir={run}", f"parallel={layout}", *LAYOUT_RUN)
    want, got = train_losses(single_pretrain), train_losses(run)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-6)
    assert read_json(run / "summary.json")["train_samples"] == read_json(single_pretrain / "summary.json")["train_samples"] == 4 * 16
