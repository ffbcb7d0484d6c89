"""RL stages (rm, ppo, grpo) and the score task: config and data errors in one line, before paddle; prompt
files; the built-in rewards and a user's reward function's checks."""
from __future__ import annotations

import json

import pytest
from helpers import config_error, dialogue, input_error

from llmx.data.formats import read_prompts
from llmx.errors import ConfigError


@pytest.fixture(scope="module")
def fake_rm(tmp_path_factory):
    """A directory that passes for a reward model (config.json + score head): validation reads no weights."""
    d = tmp_path_factory.mktemp("rm") / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "score_head.safetensors").write_bytes(b"")
    return d


BAD = {
    "grpo_one_sample": (["stage=grpo", "stage.rollout_n=1"], "stage.rollout_n=1: GRPO compares responses within a group"),
    "grpo_batch_not_whole_groups": (["stage=grpo", "stage.train.batch_size=6"],
                                    "stage.train.batch_size=6: must divide the rollout batch (64 rows"),
    "grpo_unknown_reward": (["stage=grpo", "stage.reward=exact"],
                            "stage.reward='exact': a built-in (exact_match, answer_similarity), 'model'"),
    "grpo_reward_not_importable": (["stage=grpo", "stage.reward=no_such_module:fn"],
                                   "stage.reward='no_such_module:fn': cannot import no_such_module: ModuleNotFoundError"),
    "grpo_reward_missing_function": (["stage=grpo", "stage.reward=json:no_such_fn"],
                                     "stage.reward='json:no_such_fn': json has no function no_such_fn"),
    "grpo_reward_model_missing": (["stage=grpo", "stage.reward=model"],
                                  "stage.reward_model=None: stage.reward=model needs a reward model"),
    "grpo_kl_target": (["stage=grpo", "stage.kl_target=0.1"], "stage.kl_target=0.1: GRPO keeps kl_coeff fixed"),
    "grpo_pipeline": (["stage=grpo", "parallel=pp2"], "parallel.pp=2: stage=grpo generates its rollouts with "
                      "llmx's inference engine, which does not run pipeline-parallel models"),
    "ppo_tensor_and_pipeline": (["stage=ppo", "stage.reward=exact_match", "parallel=tp2pp2"],
                                "parallel.pp=2: stage=ppo generates its rollouts with llmx's inference engine"),
    "grpo_sharding": (["stage=grpo", "parallel=sharding_stage1"], "parallel.sharding=2: stage=grpo steps its own "
                      "optimizer, without sharding's"),
    "grpo_sequence_parallel": (["stage=grpo", "parallel=tp2", "parallel.sequence_parallel=true"],
                               "parallel.sequence_parallel=True: stage=grpo's rollouts decode one token at a time"),
    "grpo_prefix": (["stage=grpo", "stage.peft.method=prefix"], "stage=grpo trains full weights (none) or LoRA"),
    "grpo_temperature_zero": (["stage=grpo", "stage.rollout.temperature=0"], "rollouts sample: must be in (0, 100]"),
    "grpo_dp_uneven": (["stage=grpo", "parallel=dp2", "stage.train.batch_size=4", "stage.rollout_n=4"],
                       "each mini-batch's 1 prompt(s) must split evenly over dp=2 ranks"),
    "ppo_without_reward_model": (["stage=ppo"], "stage.reward_model=None: stage.reward=model needs a reward model"),
    "ppo_not_a_reward_model": (["stage=ppo", "stage.reward_model=${asset:tiny_tokenizer}"],
                               "not a model directory (no config.json)"),
    "ppo_lam": (["stage=ppo", "stage.reward=exact_match", "stage.lam=1.5"], "stage.lam=1.5: must be in [0, 1]"),
    "ppo_clip_ratio": (["stage=ppo", "stage.reward=exact_match", "stage.clip_range_ratio=1.5"],
                       "stage.clip_range_ratio=1.5: must be in (0, 1)"),
    "ppo_kl_estimator": (["stage=ppo", "stage.reward=exact_match", "stage.kl_estimator=k4"],
                         "stage.kl_estimator='k4'", ),
    "ppo_ptx_data": (["stage=ppo", "stage.reward=exact_match", "stage.ptx_coeff=0.5", "stage.ptx_data=/nope.jsonl"],
                     "stage.ptx_data"),
    "rm_lora_pipeline": (["stage=rm", "parallel=pp2", "stage.peft.method=lora"],
                         "stage=rm under pipeline parallelism trains full weights"),
    "rm_tensor_parallel": (["stage=rm", "parallel=tp2"], "stage=rm runs under dp and sharding"),
    "rm_prefix": (["stage=rm", "stage.peft.method=prefix"], "preference stages train full weights (none) or LoRA"),
    "score_needs_reward_model": (["stage=infer", "stage.task=score", "stage.input=${asset:demo/dpo_eval.jsonl}",
                                  "model.name_or_path=${asset:tiny_tokenizer}"], "not a model directory"),
    "unknown_task": (["stage=infer", "stage.task=rank"], "stage.task='rank'"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_rl_config_is_one_line(name):
    overrides, expected = BAD[name]
    line = input_error(*overrides)
    assert line.startswith("llmx: config error: ") and "\n" not in line, line
    assert expected in line, line


def test_ppo_with_a_real_launch_is_one_line_without_paddle(tmp_path, fake_rm):
    line = config_error("stage=ppo", f"stage.reward_model={fake_rm}", "stage.gamma=2", tmp_path=tmp_path)
    assert line == "llmx: config error: stage.gamma=2.0: must be in [0, 1]", line


def test_score_task_needs_a_response_on_every_line(tmp_path, fake_rm):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"src": "q", "response": "a"}) + "\n" + json.dumps({"src": "q2"}) + "\n")
    line = input_error("stage=infer", "stage.task=score", f"stage.input={path}", f"model.name_or_path={fake_rm}")
    assert line == (f"llmx: data error: {path}:2: stage.task=score needs a non-empty string \"response\" (the answer "
                    "to score) on every line"), line


def test_prompt_lines_sft_and_inference_formats(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"src": "add 1 + 2 =", "tgt": "3"},  # SFT line: tgt is the reference
        {"src": ["copy: cat", "upper it"], "tgt": ["cat", "CAT"]},  # multi-turn SFT: the last tgt
        {"src": ["copy: cat", "upper it"], "tgt": ["cat"]},  # inference format: no reference
    ]) + "\n")
    lines = read_prompts(path, purpose="rl")
    assert [x.reference for x in lines] == ["3", "CAT", None]
    assert lines[1].dialogue == dialogue(("copy: cat", "cat"), question="upper it")
    path.write_text(json.dumps({"src": ["a", "b", "c"], "tgt": ["x"]}) + "\n")
    with pytest.raises(Exception, match=r"p.jsonl:1: src has 3 turns, so tgt needs the 2 earlier answers"):
        read_prompts(path, purpose="rl")


def test_builtin_rewards_and_checks():
    from llmx.rl.rewards import answer_similarity, checked_rewards, exact_match

    assert exact_match(None, [" 23 ", "24", "x"], ["23", "23", None]) == [1.0, 0.0, 0.0]
    sim = answer_similarity(None, ["COAT", "COKE", "zzzz"], ["COAT", "COAT", "COAT"])
    assert sim[0] == 1.0 and 0.2 < sim[1] < 0.5 and sim[2] == 0.0
    with pytest.raises(ConfigError, match=r"returned 1 rewards for 2 responses"):
        checked_rewards(lambda p, r, t: [1.0], "m:f", ["a", "b"], ["a", "b"], [None, None])
    with pytest.raises(ConfigError, match=r"returned str; it must return a list of 2 numbers"):
        checked_rewards(lambda p, r, t: "hi", "m:f", ["a", "b"], ["a", "b"], [None, None])
    with pytest.raises(ConfigError, match=r"non-finite reward \(nan\)"):
        checked_rewards(lambda p, r, t: [0.0, float("nan")], "m:f", ["a", "b"], ["a", "b"], [None, None])
