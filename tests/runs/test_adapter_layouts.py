"""Adapters under every layout, started as the README's headline example starts them: `python launch.py
model=qwen stage=lora parallel=tp4pp2` (8 ranks over gloo). LoRA starts from the same adapters in every
layout (drawn per parameter name, then cut per shard), so each layout's losses equal one process's; the
run saves ONE adapter (tensor-parallel shards merged, pipeline stages joined) that loads into a
one-process model with the one-process run's eval loss, and `stage.merge_adapter=true` writes one merged
model that computes the same. Prefix tuning runs where PaddleNLP's prefix model does (data-parallel
layouts) and is refused in one line elsewhere.
"""
from __future__ import annotations

import pytest

from helpers import FAST, input_error, launch, read_json, saved_model_loss, train_losses

RUN = [*FAST, "model=qwen", "stage.train.max_steps=3", "stage.train.logging_steps=1", "stage.train.save_steps=3",
       "stage.train.batch_size=4", "stage.train.grad_accum=2", "stage.eval.enabled=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")

    def run(name: str, *overrides: str):
        launch(f"hydra.run.dir={root / name}", *RUN, *overrides)
        return root / name

    return run


@pytest.fixture(scope="module")
def single_lora(runs):
    return runs("single", "stage=lora", "stage.merge_adapter=true")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp4pp2", "tp2", "pp2", "sharding_stage1"])
def test_lora_under_a_layout_matches_one_process_and_saves_one_adapter(layout, runs, single_lora):
    run = runs(layout, "stage=lora", f"parallel={layout}", "stage.merge_adapter=true")
    want = [loss for _, loss in train_losses(single_lora)]
    assert [loss for _, loss in train_losses(run)] == pytest.approx(want, rel=1e-5)
    summary = read_json(run / "summary.json")
    assert summary["adapter_dir"] == str(run / "adapter") and summary["base_model"] == str(run / "base_model")
    # the one adapter, in one process, on the one base
    reference = saved_model_loss(single_lora / "base_model", single_lora / "adapter")
    assert saved_model_loss(run / "base_model", run / "adapter") == pytest.approx(reference, rel=1e-5)
    assert saved_model_loss(run / "model") == pytest.approx(reference, rel=1e-5)  # merged: base + adapter in one model
    assert read_json(run / "adapter" / "lora_config.json")["tensor_parallel_degree"] <= 1  # not split


def test_prefix_under_data_parallel_sharding_matches_one_process(runs):
    single = runs("prefix_single", "stage=prefix")
    sharded = runs("prefix_sharding", "stage=prefix", "parallel=sharding_stage1")
    assert [x for _, x in train_losses(sharded)] == pytest.approx([x for _, x in train_losses(single)], rel=1e-5)


@pytest.mark.parametrize("layout,line", [
    ("pp2", "llmx: config error: stage.peft.method='prefix': prefix tuning does not run under pipeline parallelism"),
    ("tp2", "llmx: config error: stage.peft.method='prefix': prefix tuning does not split over tensor-parallel ranks"),
])
def test_prefix_is_refused_where_paddlenlp_cannot_run_it(layout, line):
    assert input_error("model=qwen", "stage=prefix", f"parallel={layout}").startswith(line)
