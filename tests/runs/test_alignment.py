"""Preference alignment (stage=dpo, stage=kto) on trl, with the bundled tiny model and demo data.

Cheap by design: one short SFT run shared by the session (the "sft, then dpo on its run dir"
recipe starts from it), KTO's loss formula checked on fixed log-probabilities with no training (the DPO
losses': tests/quick/test_preference_losses.py), every loss type run for two steps in this process,
and a handful of `python launch.py` runs.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import FAST, REPO, compose, launch, read_json, read_jsonl, run_in_process, run_matrix, train_losses

LN2 = math.log(2.0)
STEP_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected")


# ----------------------------------------------------------------------- the losses, by formula


def _sig(x):
    return 1 / (1 + np.exp(-x))


# policy chosen / rejected, reference chosen / rejected log-probabilities of four pairs
PC, PR = np.array([-3.0, -5.5, -2.2, -7.0]), np.array([-4.0, -5.0, -6.1, -6.5])
RC, RR = np.array([-3.5, -5.2, -2.0, -6.0]), np.array([-3.9, -5.6, -5.0, -6.4])


@pytest.mark.parametrize("kl_sign", [1, -1])
def test_kto_loss_is_its_published_formula(kl_sign):
    """KTO (Ethayarajh et al. 2024): the reference point z0 = max(0, KL estimate from mismatched pairs);
    desirable: w_d (1 - sigmoid(beta (r - z0))), undesirable: w_u (1 - sigmoid(beta (z0 - r)))."""
    import paddle

    from llmx.align.preference import kto_config
    from llmx.compat.trl import KTOCriterion

    stage = compose("stage=kto", "stage.beta=0.4", "stage.desirable_weight=1.5", "stage.undesirable_weight=0.5").stage
    criterion = KTOCriterion(SimpleNamespace(tensor_parallel_output=False, tensor_parallel_degree=1),
                             kto_config=kto_config(stage, lora=False))
    pkl, rkl = np.array([-4.0, -6.0, -5.0]), np.array([-4.5, -6.2, -5.4])
    if kl_sign < 0:
        pkl, rkl = rkl, pkl
    t = [paddle.to_tensor(x, dtype="float64") for x in (PC[:2], PR[2:], pkl, RC[:2], RR[2:], rkl)]
    loss, kl = criterion.kto_loss(*t)
    z0 = max(0.0, np.mean(pkl - rkl))
    expected = np.mean(np.concatenate([1.5 * (1 - _sig(0.4 * ((PC[:2] - RC[:2]) - z0))),
                                       0.5 * (1 - _sig(0.4 * (z0 - (PR[2:] - RR[2:]))))]))
    assert float(loss) == pytest.approx(expected, rel=1e-12) and float(kl) == pytest.approx(z0, abs=1e-12)


# ------------------------------------------------------------------------------------- runs


# the loss at step 1, where the policy is its reference (zero log-ratios), by each formula (beta 0.1)
AT_REFERENCE = {"sigmoid": LN2, "ipo": 25.0, "hinge": 1.0, "kto_pair": 0.5, "sppo_hard": 50.0, "nca_pair": 2 * LN2,
                "dpop": LN2}


def test_every_loss_type_runs_and_reference_free_ones_build_no_reference(tmp_path):
    for loss_type in [*AT_REFERENCE, "simpo", "orpo"]:
        run = tmp_path / loss_type
        # one step: its loss (before the update) and its backward + update through the loss
        summary = run_in_process(run, "stage=dpo", f"stage.loss_type={loss_type}", "stage.train.max_steps=1",
                                 "stage.train.batch_size=2", "stage.eval.enabled=false")
        losses = [loss for _, loss in train_losses(run)]
        assert len(losses) == 1 and all(math.isfinite(x) for x in losses), (loss_type, losses)
        if loss_type in AT_REFERENCE:
            assert summary["reference"] == "model copy" and summary["reference_params"] == summary["total_params"]
            assert losses[0] == pytest.approx(AT_REFERENCE[loss_type], rel=1e-6), loss_type
        else:
            assert summary["reference"] == "none" and summary["reference_params"] == 0, loss_type
        assert summary["loss_type"] == loss_type and (run / "model" / "config.json").exists()


def test_dpo_from_an_sft_run_dir_raises_held_out_preference(sft_run, tmp_path):
    """The README's recipe: sft, then dpo on its run directory."""
    run = tmp_path / "dpo"
    launch("stage=dpo", f"model.name_or_path={sft_run}", f"hydra.run.dir={run}", *FAST, "stage.train.max_steps=16",
           "stage.train.lr=1e-2")
    s = read_json(run / "summary.json")
    # the SFT model already ranks ~80% of the 64 held-out pairs right: more of them, by a wider margin
    assert s["eval_preference_accuracy_after"] > s["eval_preference_accuracy_before"], s
    assert s["eval_logp_margin_after"] > s["eval_logp_margin_before"] + 5, s
    assert s["eval_kl_to_reference_before"] == 0 and 0 < s["eval_kl_to_reference_after"] < 10, s
    assert s["eval_reward_accuracy_after"] > 0.5 and s["eval_reward_margin_after"] > 0, s
    # a full copy of the weights as the reference: two copies in the process
    assert s["reference"] == "model copy" and s["process_params"] == 2 * s["total_params"]
    assert 0.8 < s["packing_efficiency"] <= 1 and s["train_examples"] == 1000
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 17))
    for r in rows:
        assert all(math.isfinite(r[k]) for k in STEP_METRICS), r
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-5)
    assert rows[0]["loss"] == pytest.approx(LN2, rel=1e-6)
    assert (run / "model" / "config.json").exists() and (run / "visualdl").is_dir()


def test_lora_dpo_holds_one_copy_and_starts_at_ln2(sft_run, tmp_path):
    run = tmp_path / "lora"
    run_in_process(run, "stage=dpo", "stage.peft.method=lora", "stage.merge_adapter=true",
                   f"model.name_or_path={sft_run}", "stage.train.max_steps=3", "stage.eval.enabled=false")
    s, base = read_json(run / "summary.json"), read_json(sft_run / "summary.json")
    assert train_losses(run)[0] == (1, pytest.approx(LN2, abs=1e-7))  # zero-initialised adapters: policy = reference
    assert s["reference"] == "adapters disabled" and s["reference_params"] == 0
    # every parameter the run added to the process: the base once, plus the adapters
    assert s["process_params"] == s["total_params"] == base["total_params"] + s["trainable_params"]
    assert s["base_model"] == str(sft_run / "model")  # found in the run dir
    assert (run / "adapter" / "lora_config.json").exists() and (run / "model" / "config.json").exists()


def test_kto_full_widens_the_reward_gap_and_lora_runs(sft_run, tmp_path):
    full = run_in_process(tmp_path / "kto", "stage=kto", f"model.name_or_path={sft_run}", "stage.train.max_steps=40",
                          "stage.train.lr=3e-3")
    # the held-out set holds the right and a wrong answer to each prompt: the gap compares like with like
    assert full["eval_logp_gap_after"] > full["eval_logp_gap_before"] + 0.5, full
    assert full["eval_reward_gap_before"] == 0 and full["eval_reward_gap_after"] > 0.05, full
    assert 0 < full["eval_kl_to_reference_after"] < 10 and full["reference"] == "model copy"
    lora = run_in_process(tmp_path / "kto_lora", "stage=kto", "stage.peft.method=lora", "stage.merge_adapter=true",
                          f"model.name_or_path={sft_run}", "stage.train.max_steps=4")
    assert lora["reference"] == "adapters disabled" and lora["reference_params"] == 0
    assert (tmp_path / "kto_lora" / "adapter" / "lora_config.json").exists() and lora["model_dir"]
    for run, steps in ((tmp_path / "kto", 40), (tmp_path / "kto_lora", 4)):
        rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
        assert len(rows) == steps and rows[0]["loss"] == pytest.approx(0.5, abs=1e-7)  # 1 - sigmoid(0): policy = reference
        # KTO's KL term (its reference point, clipped at 0) is logged every step
        assert all(r["kl"] >= 0 and math.isfinite(r["rewards/margins"]) for r in rows)


# -------------------------------------------------------------------------------- layouts, resume

# (a constant learning rate: a run stopped after step 2 then trained the same steps as one made for 3)
LAYOUT = ["stage=dpo", "stage.train.max_steps=3", "stage.train.batch_size=2", "stage.train.grad_accum=2",
          "stage.train.save_steps=2", "stage.train.lr_scheduler=constant"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("align_layouts") / "single"
    run_in_process(run, *LAYOUT)
    return run


@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_parallel_dpo_matches_one_process(single, tmp_path, layout):
    run = tmp_path / layout
    launch(f"hydra.run.dir={run}", f"parallel={layout}", *LAYOUT, *FAST)
    assert train_losses(run) == [(s, pytest.approx(x, rel=1e-5)) for s, x in train_losses(single)]
    # the held-out measurements too (tp2: the KL over the whole vocabulary, gathered from both ranks)
    ours, one = read_json(run / "summary.json"), read_json(single / "summary.json")
    measured = [k for k in one if k.startswith("eval_")]
    assert len(measured) == 10 and {k: ours[k] for k in measured} == pytest.approx({k: one[k] for k in measured}, rel=1e-5)
    counters = read_json(run / "cpu_parallel_counters.rank1.json")  # the parallel path really ran
    assert counters["mp.c_softmax_with_cross_entropy"] > 0 if layout == "tp2" else counters["collective.all_reduce"] > 0


def test_dpo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_losses(single, tmp_path):
    """SIGKILL after the first checkpoint, relaunch: trl's trainer state comes back with the engine's checkpoint."""
    run = tmp_path / "killed"
    every_step = [*LAYOUT, "stage.train.save_steps=1", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "launch.py", *every_step, *FAST], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest, deadline = run / "checkpoints" / "latest", time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    first = latest.read_text().strip()
    summary = run_in_process(run, *every_step[:-1])  # relaunched into the same directory
    assert summary["resumed_from"] == first
    assert train_losses(run) == [(s, pytest.approx(x, rel=1e-6)) for s, x in train_losses(single)]


# KTO's reference point (its KL estimate, clipped at 0) is the one of the micro-batch one process sees:
# replicas that split each micro-batch reduce their KL terms' sum and count, replicas that take whole
# micro-batches keep their own. A learning rate that moves the weights (the estimate is positive from step 2).
KTO_MOVING = ["stage=kto", "stage.train.max_steps=3", "stage.train.save_steps=3", "stage.train.lr=1e-2",
              "stage.train.warmup_steps=0", "stage.train.lr_scheduler=constant", "stage.eval.enabled=false"]
KTO_BATCHINGS = {"whole_micro_batches": ["stage.train.batch_size=2", "stage.train.grad_accum=2"],
                 "split_micro_batches": ["stage.train.batch_size=4", "stage.train.grad_accum=1"]}


def test_kto_data_parallel_matches_one_process_as_the_weights_move(tmp_path):
    one = run_matrix({b: [*KTO_MOVING, *o] for b, o in KTO_BATCHINGS.items()}, tmp_path / "one")
    dp2 = run_matrix({b: [*KTO_MOVING, *o, "parallel=dp2"] for b, o in KTO_BATCHINGS.items()}, tmp_path / "dp2",
                     processes=2)
    for batching in KTO_BATCHINGS:
        rows = [r for r in read_jsonl(one / batching / "metrics.jsonl") if "loss" in r]
        assert [r["step"] for r in rows] == [1, 2, 3] and all(r["kl"] > 0.01 for r in rows[1:]), rows
        ours = train_losses(dp2 / batching)
        assert ours == [(s, pytest.approx(x, rel=1e-6)) for s, x in train_losses(one / batching)], batching
