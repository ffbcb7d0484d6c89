"""The eval loss is the mean over every target token of the eval set (llmx.engine.evaluation): the same at
any eval batch size, under data parallelism and with packed training, equal to a token mean computed here
from PaddleNLP's logits with numpy's cross-entropy; pretraining's perplexity is its exp. (tp2 and pp2:
tests/runs/test_parallel.py.)"""
from __future__ import annotations

import math

import pytest
from helpers import FAST, launch, read_json, run_in_process, token_mean_eval_loss

# 2 steps that move the weights (no warmup); exact match on one sample only: the loss is what is measured
SFT = [*FAST, "stage.train.max_steps=2", "stage.train.warmup_steps=0", "stage.train.batch_size=4",
       "stage.train.grad_accum=2", "stage.train.save_steps=100", "stage.eval.num_samples=1",
       "stage.eval.max_new_tokens=1"]
BATCH_SIZES = (1, 5, 16)  # 64 eval examples: 5 leaves a partial last batch


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_loss")
    return {size: (base / f"batch{size}", run_in_process(base / f"batch{size}", *SFT, f"stage.eval.batch_size={size}"))
            for size in BATCH_SIZES}


def test_eval_loss_is_the_same_at_every_eval_batch_size(sft_runs):
    _, one = sft_runs[1]
    assert one["eval_loss"] < one["eval_loss_before"]  # the weights moved between the two
    for size in BATCH_SIZES[1:]:
        _, summary = sft_runs[size]
        assert summary["eval_loss_before"] == pytest.approx(one["eval_loss_before"], rel=1e-6), size
        assert summary["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6), size


def test_eval_loss_is_the_token_mean_over_the_eval_file(sft_runs):
    run, summary = sft_runs[16]
    assert summary["eval_loss"] == pytest.approx(token_mean_eval_loss(run / "model"), rel=1e-6)


def test_data_parallel_eval_loss_equals_one_process(tmp_path, sft_runs):
    """Two replicas share the eval set in batches of 3 (the last round topped up with uncounted copies)."""
    _, one = sft_runs[1]
    run = tmp_path / "dp2"
    launch(f"hydra.run.dir={run}", "parallel=dp2", *SFT, "stage.eval.batch_size=3")
    summary = read_json(run / "summary.json")
    assert summary["eval_loss_before"] == pytest.approx(one["eval_loss_before"], rel=1e-6)
    assert summary["eval_loss"] == pytest.approx(token_mean_eval_loss(run / "model"), rel=1e-6)
    assert summary["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)  # dp2 trains like one process


def test_packed_training_evaluates_like_unpacked(tmp_path, sft_runs):
    """Packed runs evaluate one example per row through the packing collator: the same token mean (here in
    batches of 5)."""
    _, one = sft_runs[16]
    summary = run_in_process(tmp_path / "packed", *SFT, "stage.zero_padding=true", "stage.eval.batch_size=5")
    assert summary["eval_loss_before"] == pytest.approx(one["eval_loss_before"], rel=1e-6)


def test_pretrain_eval_loss_and_perplexity(tmp_path):
    runs = {size: run_in_process(tmp_path / f"batch{size}", "stage=pretrain", "stage.train.max_steps=1",
                                 "stage.eval.samples=20", f"stage.eval.batch_size={size}") for size in (3, 16)}
    assert runs[3]["eval_loss"] == pytest.approx(runs[16]["eval_loss"], rel=1e-6)
    for summary in runs.values():
        assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]), rel=1e-12)


def test_quantize_perplexity_is_exp_of_the_token_mean(tiny_model_dir):
    """stage=quantize's perplexity (llmx.quant.ptq): exp of the token mean over the set, at any batch size."""
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.quant.ptq import perplexity
    from llmx.schema import asset_path

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    encoder = SftEncoder(tokenizer, 128, 96)
    examples = [encoder.encode(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))]
    want = math.exp(token_mean_eval_loss(tiny_model_dir))
    for size in BATCH_SIZES:
        assert perplexity(model, examples, batch_size=size) == pytest.approx(want, rel=1e-6), size
