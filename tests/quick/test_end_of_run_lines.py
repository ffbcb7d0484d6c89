"""The lines a run ends with (llmx.console.summary_lines), exactly, for each kind of stage: the run dir as that
stage leaves it (what its end-to-end tests find in theirs), its summary with its keys in the stage's order.
Only the records that exist are named, the stage's outputs from its summary, and the curves / diff / rerun
hints only where they apply."""
from __future__ import annotations

import json

import pytest

from llmx.console import summary_lines


@pytest.fixture
def run(tmp_path, monkeypatch):
    """An empty run dir, `run` as the console shows it (relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def leave(run, *names: str, metrics: list[dict] = ()) -> None:
    """The files a run leaves: `.hydra/`, provenance, status, summary and log always; `names` (a trailing `/`: a
    folder, holding one file); metrics.jsonl with `metrics` when given."""
    for name in (".hydra/config.yaml", "provenance.json", "status.json", "summary.json", "llmx.log", *names):
        path = run / (name + "x" if name.endswith("/") else name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("logger: {visualdl: {}}" if name == ".hydra/config.yaml" else "{}")  # the default logger
    if metrics:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


TRAIN_METRICS = [{"step": 0, "eval_loss": 5.31}, {"step": 10, "loss": 4.2, "lr": 0.01, "tokens_per_s": 900.0},
                 {"step": 20, "loss": 2.1, "lr": 0.01, "tokens_per_s": 910.0}, {"step": 20, "eval_loss": 1.9},
                 {"step": 20, "exact_match": 0.25}]


def test_a_training_stage_names_its_records_model_curves_diff_and_rerun(run):
    leave(run, "samples.jsonl", "checkpoints/step-20/", "visualdl/vdlrecords.1.log", "model/", metrics=TRAIN_METRICS)
    summary = {"stage": "sft", "steps": 20, "epoch": 2.5, "resumed_from": None, "trainable_params": 1_032_704,
               "total_params": 1_032_704, "eval_loss": 1.9, "train_loss": 3.15, "final_loss": 2.1, "tokens_per_s": 905.0,
               "eval_loss_before": 5.31, "exact_match": 0.25, "model_dir": str(run / "model")}
    assert summary_lines(summary, run, 12.4) == [
        "done in 12 s: sft",
        "  steps             20",
        "  eval_loss         5.31 -> 1.9",
        "  train_loss        3.15",
        "  final_loss        2.1",
        "  exact_match       0.25",
        "  tokens_per_s      905",
        "  trainable_params  1,032,704",
        "  total_params      1,032,704",
        "  model_dir         run/model",
        "run dir: run  (summary.json, metrics.jsonl, samples.jsonl, checkpoints/, visualdl/, llmx.log)",
        "curves:  visualdl --logdir run",
        "compare: python -m llmx diff run <another run>;  reproduce: python -m llmx rerun run --check",
    ]


def test_an_adapter_run_names_its_adapter_and_base(run, tmp_path):
    leave(run, "checkpoints/step-8/", "visualdl/vdlrecords.1.log", "adapter/", metrics=TRAIN_METRICS[1:3])
    (tmp_path / "base").mkdir()
    summary = {"stage": "lora", "steps": 8, "epoch": 1.0, "resumed_from": None, "trainable_params": 2_442_240,
               "total_params": 136_957_248, "train_loss": 3.15, "final_loss": 2.1, "tokens_per_s": 905.0,
               "adapter_dir": str(run / "adapter"), "base_model": str(tmp_path / "base"), "peft_method": "lora",
               "adapter_bytes": 13_341_069}
    assert summary_lines(summary, run, 30)[-6:] == [
        "  adapter_bytes     13,341,069",
        "  adapter_dir       run/adapter",
        "  base_model        base",
        "run dir: run  (summary.json, metrics.jsonl, checkpoints/, visualdl/, llmx.log)",
        "curves:  visualdl --logdir run",
        "compare: python -m llmx diff run <another run>;  reproduce: python -m llmx rerun run --check",
    ]


def test_an_rl_stage_without_curves_gets_no_visualdl_hint(run):
    """GRPO logs metrics.jsonl (losses: rerun --check applies) and writes no VisualDL log."""
    leave(run, "checkpoints/step-4/", "model/", metrics=[{"step": 0, "eval_reward_before": 0.1},
                                                       {"step": 1, "loss": 0.02, "reward_mean": 0.2, "kl": 0.0}])
    summary = {"stage": "grpo", "steps": 4, "resumed_from": None, "trainable_params": 1_032_704,
               "total_params": 1_032_704, "reference": "model copy", "process_params": 2_065_408,
               "eval_reward_before": 0.1, "eval_kl_before": 0.0, "final_reward_mean": 0.4, "final_kl": 0.0012,
               "final_loss": 0.02, "rollout_share": 0.61, "rollout_tokens_per_s": 812.3, "eval_reward_after": 0.35,
               "eval_kl_after": 0.0021, "kl_to_reference": 0.0021, "model_dir": str(run / "model")}
    assert summary_lines(summary, run, 61) == [
        "done in 61 s: grpo",
        "  steps                 4",
        "  final_loss            0.02",
        "  trainable_params      1,032,704",
        "  total_params          1,032,704",
        "  process_params        2,065,408",
        "  eval_reward_before    0.1",
        "  eval_kl_before        0",
        "  final_reward_mean     0.4",
        "  final_kl              0.0012",
        "  rollout_share         0.61",
        "  rollout_tokens_per_s  812.3",
        "  eval_reward_after     0.35",
        "  eval_kl_after         0.0021",
        "  kl_to_reference       0.0021",
        "  model_dir             run/model",
        "run dir: run  (summary.json, metrics.jsonl, checkpoints/, llmx.log)",
        "compare: python -m llmx diff run <another run>;  reproduce: python -m llmx rerun run --check",
    ]


def test_infer_names_its_predictions_file_and_offers_no_rerun_check(run):
    leave(run, "output.jsonl")
    summary = {"stage": "infer", "requests": 2, "prompt_tokens": 60, "generated_tokens": 25, "tokens_per_s": 11.1,
               "output": str(run / "output.jsonl")}
    assert summary_lines(summary, run, 4) == [
        "done in 4 s: infer",
        "  tokens_per_s      11.1",
        "  requests          2",
        "  prompt_tokens     60",
        "  generated_tokens  25",
        "  output            run/output.jsonl",
        "run dir: run  (summary.json, llmx.log)",
        "compare: python -m llmx diff run <another run>",
    ]


def test_infer_elsewhere_names_the_file_it_wrote(run, tmp_path):
    """`stage.output=preds.jsonl`: the path as given, relative to where the run started."""
    (tmp_path / "preds.jsonl").write_text("{}\n")
    leave(run)
    summary = {"stage": "infer", "requests": 1, "prompt_tokens": 6, "generated_tokens": 5, "tokens_per_s": 10.0,
               "output": "preds.jsonl"}
    assert summary_lines(summary, run, 4)[-3:] == ["  output            preds.jsonl", "run dir: run  (summary.json, llmx.log)",
                                                   "compare: python -m llmx diff run <another run>"]


def test_quantize_names_the_quantized_model_and_compares_perplexity(run):
    leave(run, "model/")
    summary = {"stage": "quantize", "algorithm": "gptq", "perplexity_before": 7.66361, "perplexity_after": 15.5954,
               "bytes_before": 538_090_408, "bytes_after": 286_409_016, "calibration_seconds": 1.68,
               "quantize_seconds": 54.802, "layer_error_max": 0.001339, "layer_errors": {"llama.layers.0.mlp.up_proj": 1e-4},
               "model_dir": str(run / "model")}
    assert summary_lines(summary, run, 60) == [
        "done in 60 s: quantize",
        "  perplexity_before    7.664",
        "  perplexity_after     15.6",
        "  bytes_before         538,090,408",
        "  bytes_after          286,409,016",
        "  calibration_seconds  1.68",
        "  quantize_seconds     54.8",
        "  layer_error_max      0.001339",
        "  model_dir            run/model",
        "run dir: run  (summary.json, llmx.log)",
        "compare: python -m llmx diff run <another run>",
    ]


def test_merge_names_its_model_and_record_and_no_hints(run):
    leave(run, "merge.json", "model/")
    summary = {"stage": "merge", "method": "dare_ties", "models": 2, "tensors": 12, "merge_seconds": 0.412,
               "model_dir": str(run / "model")}
    assert summary_lines(summary, run, 3) == [
        "done in 3 s: merge",
        "  models         2",
        "  tensors        12",
        "  merge_seconds  0.412",
        "  model_dir      run/model",
        "run dir: run  (summary.json, merge.json, llmx.log)",
    ]


def test_convert_names_the_converted_checkpoint_and_no_hints(run):
    leave(run, "hf/")
    summary = {"stage": "convert", "direction": "to_hf", "family": "llama", "tensors": 12, "megabytes": 4.21,
               "seconds": 0.052, "model_dir": str(run / "hf"), "mb_per_s": 81.0}
    assert summary_lines(summary, run, 2) == [
        "done in 2 s: convert",
        "  tensors    12",
        "  megabytes  4.21",
        "  seconds    0.052",
        "  mb_per_s   81",
        "  model_dir  run/hf",
        "run dir: run  (summary.json, llmx.log)",
    ]


def test_a_stopped_server_ends_with_its_traffic_and_the_run_dir_only(run):
    leave(run)
    summary = {"stage": "serve", "requests": 3, "generated_tokens": 41, "prompt_tokens": 52}
    assert summary_lines(summary, run, 95) == [
        "done in 95 s: serve",
        "  requests          3",
        "  generated_tokens  41",
        "  prompt_tokens     52",
        "run dir: run  (summary.json, llmx.log)",
    ]


def test_a_run_dir_outside_the_working_directory_is_shown_whole(tmp_path, monkeypatch):
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    leave(run)
    assert summary_lines({"stage": "serve"}, run, 1)[-1] == f"run dir: {run}  (summary.json, llmx.log)"
