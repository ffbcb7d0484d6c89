"""Reward models, PPO and GRPO (stage=rm, ppo, grpo) on the tiny model, from the session's short SFT run.

Cheap by design: the reward model is trained once (module fixture) and is the PPO critic's start and the
scorer of `stage=infer stage.task=score`; most runs go in this process (helpers.run_in_process); only the
data-parallel and tensor-parallel runs and the SIGKILL-resume test start `launch.py`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, REPO, launch, read_json, read_jsonl, run_in_process

HERE = Path(__file__).parent
# a rule the tiny model learns within a few steps (tests/runs/rl_rewards.py)
UPPERCASE = "stage.reward=rl_rewards:uppercase"
SMALL = ("stage.data.eval_prompts=16", "stage.rollout.prompts_per_step=8", "stage.rollout.max_new_tokens=8")


@pytest.fixture(scope="module")
def rm_run(sft_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("rl") / "rm"
    run_in_process(run, "stage=rm", f"model.name_or_path={sft_run}", "stage.train.max_steps=60")
    return run


def test_reward_model_learns_the_preferences_and_scores_as_a_stage(rm_run, tmp_path):
    s = read_json(rm_run / "summary.json")
    # Above chance on the 64 held-out pairs: a coin-flip scorer reaches 39/64 with p = 0.05. Measured over
    # seeds 42, 0, 1, 2 x model.fused_ops off/auto (the SFT start differs by rounding over its 800 steps,
    # from the same start the RM's losses agree to 1e-6): 0.625-0.84, mean 0.72, sd 0.07; the gain over the
    # untrained head's accuracy at least +0.16.
    assert s["eval_accuracy_after"] >= 39 / 64 and s["eval_accuracy_after"] > s["eval_accuracy_before"] + 0.1
    assert s["eval_margin_after"] > s["eval_margin_before"]
    assert (Path(s["model_dir"]) / "score_head.safetensors").is_file()
    logged = [r for r in read_jsonl(rm_run / "metrics.jsonl") if "loss" in r]
    assert logged and all("accuracy" in r and "margin" in r for r in logged)
    assert logged[0]["loss"] == pytest.approx(np.log(2), abs=0.1)  # small head: scores start near equal

    # stage=infer stage.task=score: the chosen answers of the held-out pairs score higher on average
    import json

    lines = []
    for line in read_jsonl(REPO / "llmx/assets/demo/dpo_eval.jsonl")[:24]:
        chosen, rejected = (line["response"] if line["sort"][0] > line["sort"][1] else line["response"][::-1])
        history = {"src": line["src"], "tgt": line["tgt"]}
        lines += [{**history, "response": chosen, "kind": "chosen"}, {**history, "response": rejected, "kind": "rejected"}]
    prompts = tmp_path / "pairs.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = run_in_process(tmp_path / "score", "stage=infer", "stage.task=score", f"model.name_or_path={rm_run}",
                             f"stage.input={prompts}")
    out = read_jsonl(Path(summary["output"]))
    assert [o["kind"] for o in out] == [x["kind"] for x in lines]  # input order, input keys kept
    chosen = np.mean([o["score"] for o in out if o["kind"] == "chosen"])
    rejected = np.mean([o["score"] for o in out if o["kind"] == "rejected"])
    assert chosen > rejected


def _greedy_kl(policy_dir: Path, reference_dir: Path, prompts: int, max_new_tokens: int) -> float:
    """The mean per-token KL(policy || reference) of the next-token distributions along the policy's greedy
    answers to the first held-out prompts, recomputed without llmx's engine or KL: one unpadded prompt at a
    time, a full forward per new token, the KL in numpy."""
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from llmx.data.formats import read
    from llmx.data.infer import prompt_ids
    from llmx.infer.build import eos_ids

    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    policy, reference = (AutoModelForCausalLM.from_pretrained(str(d)) for d in (policy_dir, reference_dir))
    policy.eval()
    reference.eval()
    stop = set(eos_ids(policy.config, tokenizer))

    def log_probs(model, ids: list) -> np.ndarray:
        with paddle.no_grad():
            out = model(input_ids=paddle.to_tensor([ids]))
        logits = (out[0] if isinstance(out, tuple) else out.logits)[0].numpy().astype("float64")
        top = logits.max(-1, keepdims=True)
        return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))

    total, positions = 0.0, 0
    for line in read("rl", str(REPO / "llmx/assets/demo/sft_eval.jsonl"))[:prompts]:
        prompt = prompt_ids(tokenizer, line.dialogue)[-96:]  # (stage.data.max_prompt_length's default)
        ids = list(prompt)
        for _ in range(max_new_tokens):
            token = int(np.argmax(log_probs(policy, ids)[-1]))
            ids.append(tokenizer.eos_token_id if token in stop else token)
            if token in stop:
                break
        p, q = (log_probs(m, ids)[len(prompt) - 1:-1] for m in (policy, reference))  # predicting the answer
        total += float((np.exp(p) * (p - q)).sum())
        positions += len(ids) - len(prompt)
    return total / positions


def test_ppo_raises_the_reward_models_held_out_reward(sft_run, rm_run, tmp_path):
    run = tmp_path / "ppo"
    s = run_in_process(run, "stage=ppo", f"model.name_or_path={sft_run}", f"stage.reward_model={rm_run}",
                       "stage.train.max_steps=15", "stage.data.eval_prompts=32")
    assert s["eval_reward_after"] > s["eval_reward_before"] + 0.3
    # the policy starts as a copy of its reference; after training, the KL is the one recomputed here
    # (over the 32 eval prompts, up to stage.rollout.max_new_tokens=16 greedy tokens each)
    assert s["eval_kl_before"] == 0 and s["kl_to_reference"] == s["eval_kl_after"] > 0
    assert s["kl_to_reference"] == pytest.approx(_greedy_kl(Path(s["model_dir"]), sft_run / "model", 32, 16), rel=1e-4)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "reward_mean" in r]
    assert len(rows) == 15
    for key in ("reward_mean", "reward_std", "kl", "kl_coeff", "policy_loss", "value_loss", "clipfrac",
                "value_clipfrac", "entropy", "response_length", "rollout_s", "train_s"):
        assert all(np.isfinite(r[key]) for r in rows), key
    critic = Path(s["critic_dir"])  # the trained critic is a score model too
    assert (critic / "score_head.safetensors").is_file()
    assert s["reference"] == "model copy"


def test_grpo_rule_reward_rises_with_bounded_kl(sft_run, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    s = run_in_process(tmp_path / "grpo", "stage=grpo", f"model.name_or_path={sft_run}", UPPERCASE,
                       "stage.train.max_steps=12", "stage.train.batch_size=8", *SMALL)  # 4 updates per rollout batch
    assert s["eval_reward_after"] > s["eval_reward_before"] + 0.15
    assert s["kl_to_reference"] < 3.0
    # what it leaves: metrics (losses), checkpoints, its model and VisualDL curves (the default logger), no empty
    # folder (staging); the closing lines say so
    from helpers import compose, empty_folders
    from omegaconf import OmegaConf

    from llmx.console import summary_lines

    run = tmp_path / "grpo"
    assert empty_folders(run) == []
    (run / ".hydra").mkdir()
    OmegaConf.save(compose("stage=grpo"), run / ".hydra" / "config.yaml")  # what launch.py's Hydra writes
    lines = summary_lines(s, run, 0)
    assert lines[-4].split() == ["model_dir", str(run / "model")]
    assert lines[-3:] == [f"run dir: {run}  (summary.json, metrics.jsonl, checkpoints/, visualdl/)",
                          f"curves:  visualdl --logdir {run}",
                          f"compare: python -m llmx diff {run} <another run>;  reproduce: python -m llmx rerun {run} --check"]


def test_lora_actor_holds_one_copy_of_the_base(sft_run, rm_run, tmp_path):
    """GRPO scored by the reward model: the LoRA actor's reference is its base with adapters off, so the
    process holds the base once (plus adapters and the frozen reward model); a full actor holds it twice."""
    reward = ("stage.reward=model", f"stage.reward_model={rm_run}", "stage.train.max_steps=1", *SMALL)
    s = run_in_process(tmp_path / "grpo_lora", "stage=grpo", "stage.peft.method=lora", f"model.name_or_path={sft_run}",
                       *reward)
    base = read_json(sft_run / "summary.json")["total_params"]
    scorer = read_json(rm_run / "summary.json")["total_params"]  # backbone + head
    assert s["reference"] == "adapters disabled"
    assert s["process_params"] == base + s["trainable_params"] + scorer
    full = run_in_process(tmp_path / "grpo_full", "stage=grpo", f"model.name_or_path={sft_run}", *reward,
                          "stage.data.eval=null")
    assert full["process_params"] == 2 * base + scorer
    assert (Path(s["adapter_dir"]) / "lora_config.json").is_file()
    assert np.isfinite(s["eval_reward_after"]) and s["eval_reward_before"] != 0  # the reward model's scores


def test_grpo_dp2_equals_one_process(sft_run, tmp_path, monkeypatch):
    """Two ranks roll out half the prompts each (same per-response seeds) and sum gradients: the first step's
    losses and the updated weights equal one process's."""
    monkeypatch.syspath_prepend(str(HERE))
    common = ("stage=grpo", f"model.name_or_path={sft_run}", UPPERCASE, "stage.train.max_steps=1",
              "stage.rollout.prompts_per_step=4", "stage.train.batch_size=16", "stage.data.eval=null")
    one = tmp_path / "one"
    run_in_process(one, *common)
    two = tmp_path / "dp2"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    launch(*common, "parallel=dp2", f"hydra.run.dir={two}", *FAST, env=env)
    a, b = (next(r for r in read_jsonl(d / "metrics.jsonl") if "policy_loss" in r) for d in (one, two))
    for key in ("reward_mean", "reward_std", "policy_loss", "surrogate", "kl_loss", "entropy", "response_length"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    from safetensors.numpy import load_file

    wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (one, two))
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-5


def test_sigkill_after_a_checkpoint_resumes_with_the_same_rollouts(sft_run, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    common = ("stage=grpo", f"model.name_or_path={sft_run}", UPPERCASE, "stage.train.max_steps=6",
              "stage.train.save_steps=2", "stage.data.eval=null", *SMALL)
    whole = tmp_path / "whole"
    run_in_process(whole, *common)
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *common, f"hydra.run.dir={run}", *FAST],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step-2").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    launch(*common, f"hydra.run.dir={run}", *FAST, env=env)
    s = read_json(run / "summary.json")
    assert s["resumed_from"] == "step-2"
    ref = {r["step"]: r for r in read_jsonl(whole / "metrics.jsonl") if "reward_mean" in r}
    got = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if "reward_mean" in r}
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("reward_mean", "policy_loss", "response_length"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_ppo_resumes_critic_optimizers_and_kl_state(sft_run, rm_run, tmp_path):
    """A PPO run (with a PTX loss) continued from its step-2 checkpoint to step 3 logs what an uninterrupted
    3-step run logs: actor, critic, both optimizers, the adaptive KL coefficient, the reward statistics and
    the position in the PTX data all came back."""
    common = ("stage=ppo", f"model.name_or_path={sft_run}", f"stage.reward_model={rm_run}", "stage.data.eval=null",
              "stage.kl_target=0.05", "stage.kl_horizon=100", "stage.train.save_steps=2",
              "stage.rollout.prompts_per_step=16", "stage.ptx_coeff=0.5")
    whole = tmp_path / "whole"
    run_in_process(whole, *common, "stage.train.max_steps=3")
    run = tmp_path / "continued"
    run_in_process(run, *common, "stage.train.max_steps=2")
    s = run_in_process(run, *common, "stage.train.max_steps=3")
    assert s["resumed_from"] == "step-2"
    saved = sorted(p.name for p in (run / "checkpoints" / "step-2").iterdir())
    pickles = [n for n in saved if (run / "checkpoints" / "step-2" / n).read_bytes()[:1] == b"\x80"]
    assert not pickles and "critic_optimizer.safetensors" in saved and "rng.rank0.json" in saved, saved
    want = [r for r in read_jsonl(whole / "metrics.jsonl") if "reward_mean" in r]
    got = [r for r in read_jsonl(run / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, want):
        assert a["ptx_loss"] > 0
        for key in ("reward_mean", "kl", "kl_coeff", "policy_loss", "value_loss", "value_mean", "ptx_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert want[2]["kl_coeff"] != want[0]["kl_coeff"]  # the adaptive coefficient moved (and was restored)


# ------------------------------------------------------------------------------------------ layouts
# Tensor parallelism (parallel=tp2): rollouts through the inference engine on the split model, 3 steps at a
# learning rate that moves the weights (no warmup, clipping on), equal to one process step for step. Pipeline
# layouts, sharding and sequence parallelism are refused before launch (tests/quick/test_rl_inputs.py).

MOVING = ("stage.train.max_steps=3", "stage.train.lr=1e-3", "stage.train.warmup_steps=0",
          "stage.rollout.prompts_per_step=4", "stage.rollout.max_new_tokens=8", "stage.data.eval_prompts=4")


def _launch(*overrides: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    launch(*overrides, *FAST, env=env)


def _same_steps(one: Path, other: Path, keys: tuple) -> None:
    a, b = ([r for r in read_jsonl(d / "metrics.jsonl") if "policy_loss" in r] for d in (one, other))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=_floor(key)), (ra["step"], key)
    sa, sb = read_json(one / "summary.json"), read_json(other / "summary.json")
    for key in ("eval_reward_after", "eval_kl_after"):
        assert sb[key] == pytest.approx(sa[key], rel=1e-5, abs=_floor(key)), key


def _floor(key: str) -> float:
    """The absolute tolerance near zero. A KL estimate is a sum over a response's tokens of differences of
    nearly equal log-probabilities (about 5 each): split matmuls round them differently by ~1e-7 each, so a
    small KL (0.005 after one step) carries a few 1e-6 of rounding in either layout."""
    return 1e-5 if "kl" in key else 1e-6


def _tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import paddle

    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


def _same_weights(one: Path, other: Path, name: str, start: Path | None = None) -> None:
    """The two runs' weights moved the same way: the distance between them is under 1e-4 of how far they moved
    from `start` (of their norm without one). Not 1e-5 per element: an element whose gradient is ~0 takes an
    Adam step of ±lr whose sign is the rounding's, in either layout (2 of 140k elements here)."""
    wa, wb = (_tensors(d / name) for d in (one, other))
    assert sorted(wa) == sorted(wb)
    w0 = _tensors(start) if start is not None else {k: np.zeros_like(v) for k, v in wa.items()}
    apart = np.sqrt(sum(float(((wa[k] - wb[k]) ** 2).sum()) for k in wa))
    moved = np.sqrt(sum(float(((wa[k] - w0[k]) ** 2).sum()) for k in wa))
    assert moved > 0 and apart < 1e-4 * moved, (apart, moved)


def test_grpo_tp2_equals_one_process_and_resumes(sft_run, tmp_path, monkeypatch):
    """Same sampled tokens, rewards, losses and KL per step; same weights after 3 steps. The tp2 run stops after
    step 2 and is continued to step 3 from its checkpoint (one file per shard)."""
    monkeypatch.syspath_prepend(str(HERE))
    common = ("stage=grpo", f"model.name_or_path={sft_run}", UPPERCASE,
              "stage.train.batch_size=8", "stage.train.save_steps=2", *MOVING)
    one = tmp_path / "one"
    run_in_process(one, *common)
    tp2 = tmp_path / "tp2"
    _launch(*common, "parallel=tp2", "stage.train.max_steps=2", f"hydra.run.dir={tp2}")
    assert (tp2 / "checkpoints" / "step-2" / "actor.tp01.safetensors").is_file()
    _launch(*common, "parallel=tp2", f"hydra.run.dir={tp2}")
    assert read_json(tp2 / "summary.json")["resumed_from"] == "step-2"
    _same_steps(one, tp2, ("reward_mean", "reward_std", "kl", "policy_loss", "surrogate", "kl_loss", "entropy",
                           "response_length", "generated_tokens"))
    _same_weights(one, tp2, "model/model.safetensors", sft_run / "model" / "model.safetensors")


def test_ppo_tp2_equals_one_process(sft_run, rm_run, tmp_path):
    """A LoRA actor (reference: adapters off), the reward model, a critic started from it, PTX loss and the
    adaptive KL coefficient, all split over 2 ranks: the same steps, and the same critic and adapter.
    (value_clipfrac is left out: it counts ties between clipped and unclipped values, which rounding breaks.)"""
    common = ("stage=ppo", "stage.peft.method=lora", f"model.name_or_path={sft_run}", f"stage.reward_model={rm_run}",
              "stage.train.batch_size=2", "stage.ptx_coeff=0.5", "stage.kl_target=0.05", "stage.kl_horizon=100",
              *MOVING)
    one = tmp_path / "one"
    run_in_process(one, *common)
    tp2 = tmp_path / "tp2"
    _launch(*common, "parallel=tp2", f"hydra.run.dir={tp2}")
    _same_steps(one, tp2, ("reward_mean", "kl", "kl_coeff", "policy_loss", "value_loss", "value_mean", "ptx_loss",
                           "entropy", "response_length"))
    _same_weights(one, tp2, "critic/model.safetensors", rm_run / "model" / "model.safetensors")
    _same_weights(one, tp2, "adapter/lora_model_state.pdparams")
