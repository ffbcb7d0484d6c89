"""The schema ppo and grpo share, and its validation (paddle-free: errors come before heavy imports)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from llmx.schema import DataFiles, PeftConfig, TrainConfig, positive, require, validate_training
from llmx.sources import score_head_file

KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass
class PromptData(DataFiles):
    train: Any = "${asset:demo/sft_train.jsonl}"  # prompts in any format (llmx.data.formats); a reference feeds rule rewards
    eval: Optional[str] = "${asset:demo/sft_eval.jsonl}"  # held-out prompts: the mean reward before and after
    max_prompt_length: int = 96  # an over-long prompt keeps this many tokens (from the right)
    eval_prompts: int = 64  # held-out prompts measured (-1: all)


@dataclass
class RolloutConfig:
    """Generation of the rollouts (llmx.infer's engine: KV cache, continuous batching)."""

    prompts_per_step: int = 16  # prompts of one rollout batch (over all data-parallel ranks)
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_batch: int = 64  # rows decoding together


@dataclass
class RLConfig:
    """The fields ppo and grpo share (each stage's Config extends it)."""

    runner: str = "grpo"
    data: PromptData = field(default_factory=PromptData)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # max_steps = rollout batches; batch_size = rows per update
    peft: PeftConfig = field(default_factory=PeftConfig)
    reward: str = "exact_match"  # exact_match | answer_similarity | module:function | model (stage.reward_model)
    reward_model: Optional[str] = None  # a stage=rm run (or its model/adapter dir)
    update_iters: int = 1  # passes over each rollout batch
    clip_range_ratio: float = 0.2  # the policy ratio is clipped to [1 - c, 1 + c]
    kl_coeff: float = 0.05  # weight of the KL to the reference
    kl_target: Optional[float] = None  # ppo: adapt kl_coeff towards this KL per response (null: fixed)
    kl_horizon: int = 10000  # ppo: samples over which the adaptive coefficient moves by the error
    kl_estimator: str = "k1"  # k1 | k2 | k3 (Schulman's estimators from the sampled tokens)


def validate_rl(cfg: DictConfig) -> None:
    s, p, d, r = cfg.stage, cfg.parallel, cfg.stage.data, cfg.stage.rollout
    validate_training(cfg, "rl")
    positive("stage.data.max_prompt_length", d.max_prompt_length)
    require(d.eval_prompts == -1 or d.eval_prompts >= 1, "stage.data.eval_prompts", d.eval_prompts, "must be >= 1 or -1 (all)")
    require(s.peft.method in ("none", "lora"), "stage.peft.method", s.peft.method,
            f"stage={s.runner} trains full weights (none) or LoRA adapters (lora)")
    require(p.pp == 1, "parallel.pp", p.pp, f"stage={s.runner} generates its rollouts with llmx's inference "
            "engine, which does not run pipeline-parallel models (parallel=single, dp2 or tp2)")
    require(p.sharding == 1, "parallel.sharding", p.sharding, f"stage={s.runner} steps its own optimizer, "
            "without sharding's (parallel=single, dp2 or tp2)")
    require(not p.sequence_parallel, "parallel.sequence_parallel", True, f"stage={s.runner}'s rollouts decode one "
            "token at a time, which sequence parallelism cannot split")
    for key in ("prompts_per_step", "max_new_tokens", "max_batch"):
        positive(f"stage.rollout.{key}", r[key])
    require(0 < r.temperature <= 100, "stage.rollout.temperature", r.temperature,
            "rollouts sample: must be in (0, 100]")
    require(0 < r.top_p <= 1, "stage.rollout.top_p", r.top_p, "must be in (0, 1]")
    require(r.top_k >= 0, "stage.rollout.top_k", r.top_k, "must be >= 0 (0 = off)")
    positive("stage.update_iters", s.update_iters)
    if s.reward != "model":
        from llmx.rl.rewards import load_reward_fn

        load_reward_fn(s.reward)  # a module:function that cannot be imported fails here, in one line
    require(s.reward != "model" or s.reward_model is not None, "stage.reward_model", None,
            "stage.reward=model needs a reward model: stage.reward_model=<a stage=rm run>")
    if s.reward_model is not None:
        score_head_file(s.reward_model, "stage.reward_model")
    require(0 < s.clip_range_ratio < 1, "stage.clip_range_ratio", s.clip_range_ratio, "must be in (0, 1)")
    require(s.kl_coeff >= 0, "stage.kl_coeff", s.kl_coeff, "must be >= 0")
    require(s.kl_target is None or s.kl_target > 0, "stage.kl_target", s.kl_target, "must be > 0 (or null: fixed kl_coeff)")
    require(s.kl_estimator in KL_ESTIMATORS, "stage.kl_estimator", s.kl_estimator, f"allowed: {', '.join(KL_ESTIMATORS)}")
    rows = r.prompts_per_step * rollout_n(s)
    require(rows % s.train.batch_size == 0, "stage.train.batch_size", s.train.batch_size,
            f"must divide the rollout batch ({rows} rows = prompts_per_step x samples per prompt)")
    mini_prompts = s.train.batch_size // rollout_n(s) if rollout_n(s) > 1 else s.train.batch_size
    require(s.train.batch_size % rollout_n(s) == 0, "stage.train.batch_size", s.train.batch_size,
            f"must hold whole groups: a multiple of rollout_n ({rollout_n(s)})")
    require(mini_prompts % p.dp == 0, "stage.train.batch_size", s.train.batch_size,
            f"each mini-batch's {mini_prompts} prompt(s) must split evenly over dp={p.dp} ranks")
    require(s.train.grad_accum == 1, "stage.train.grad_accum", s.train.grad_accum,
            "RL stages step once per mini-batch (stage.train.batch_size rows); set stage.train.batch_size instead")


def rollout_n(stage: DictConfig) -> int:
    return int(stage.get("rollout_n", 1))
