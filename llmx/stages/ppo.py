"""PPO runner (RLHF): the actor from `model.name_or_path` (an SFT run; full or LoRA), a frozen reference
(a copy, or for LoRA the base with adapters off), the reward model `stage.reward_model` (a stage=rm run,
frozen) and a critic initialised from it; rollouts on llmx's inference engine; GAE, clipped policy and
value losses, KL penalty in the reward, optional PTX loss on SFT data. The loop is llmx.rl's (llmx.rl.ppo)."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from llmx.schema import existing, positive, require
from llmx.rl.config import RLConfig, validate_rl


@dataclass
class Config(RLConfig):
    runner: str = "ppo"
    reward: str = "model"  # the reward model (stage.reward_model), or a rule: exact_match | module:function
    critic_lr: float = 1.0e-3
    gamma: float = 1.0  # discount over response tokens
    lam: float = 0.95  # GAE's lambda
    clip_range_value: float = 5.0  # the critic's new values stay within this of the rollout's
    clip_range_score: float = 10.0  # scores are clipped to [-c, c] after normalisation
    normalize_reward: bool = True  # divide scores by their running standard deviation, after the running mean
    ptx_coeff: float = 0.0  # > 0: add this times the LM loss on stage.ptx_data (keeps SFT skills)
    ptx_data: str = "${asset:demo/sft_train.jsonl}"
    ptx_max_length: int = 128


def validate(cfg: DictConfig) -> None:
    s = cfg.stage
    validate_rl(cfg)
    require(s.get("rollout_n", 1) == 1, "stage.rollout_n", s.get("rollout_n"), "PPO samples one response per prompt")
    require(0 <= s.gamma <= 1, "stage.gamma", s.gamma, "must be in [0, 1]")
    require(0 <= s.lam <= 1, "stage.lam", s.lam, "must be in [0, 1]")
    for key in ("critic_lr", "clip_range_value", "clip_range_score"):
        require(s[key] > 0, f"stage.{key}", s[key], "must be > 0")
    require(s.ptx_coeff >= 0, "stage.ptx_coeff", s.ptx_coeff, "must be >= 0")
    if s.ptx_coeff > 0:
        existing("stage.ptx_data", s.ptx_data, "file")
        positive("stage.ptx_max_length", s.ptx_max_length, 2)


def prepare(cfg: DictConfig) -> dict:
    from llmx.data.formats import read, read_splits

    d = cfg.stage.data
    if cfg.stage.ptx_coeff > 0:
        read("sft", cfg.stage.ptx_data)  # checked now, before anything heavy
    return read_splits(d, "rl", cfg.seed)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.rl.loop import train
    from llmx.rl.ppo import PPO

    return train(cfg, ctx, PPO(cfg.stage))
