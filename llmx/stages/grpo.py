"""GRPO runner: `rollout_n` sampled responses per prompt, rewards from a rule (default: exact match with the
prompt's reference answer on the bundled checkable tasks), any `module:function`, or a reward model; group-
standardised advantages, no critic, a clipped ratio and a KL penalty to the reference in the loss. Starts
from `model.name_or_path` (an SFT run, a model dir); full or LoRA. The loop is llmx.rl's (llmx.rl.grpo)."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from llmx.schema import require
from llmx.rl.config import RLConfig, validate_rl


@dataclass
class Config(RLConfig):
    runner: str = "grpo"
    rollout_n: int = 4  # responses sampled per prompt (a group)
    scale_rewards: bool = True  # divide by the group's standard deviation (false: only subtract its mean)
    kl_coeff: float = 0.04
    kl_estimator: str = "k3"  # unbiased and never negative: the loss's penalty


def validate(cfg: DictConfig) -> None:
    s = cfg.stage
    require(s.rollout_n >= 2, "stage.rollout_n", s.rollout_n, "GRPO compares responses within a group: must be >= 2")
    require(s.kl_target is None, "stage.kl_target", s.kl_target, "GRPO keeps kl_coeff fixed (the adaptive "
            "controller is PPO's)")
    validate_rl(cfg)


def prepare(cfg: DictConfig) -> dict:
    from llmx.data.formats import read_splits

    d = cfg.stage.data
    return read_splits(d, "rl", cfg.seed)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.rl.grpo import GRPO
    from llmx.rl.loop import train

    return train(cfg, ctx, GRPO(cfg.stage))
