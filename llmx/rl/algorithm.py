"""What ppo and grpo share around the loop: where rewards come from, the rollout's log-probabilities, and
one optimizer step over a data-parallel mini-batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import paddle
from omegaconf import DictConfig

from llmx.rl import losses as L
from llmx.rl.loop import all_sum, sync_grads
from llmx.rl.rollout import Batch, logits_of


@dataclass
class Experience:
    batch: Batch
    old_logp: paddle.Tensor  # [rows, T-1] the rollout policy's log-probs of the taken tokens
    ref_logp: paddle.Tensor
    advantages: paddle.Tensor  # [rows, T-1]
    extra: dict = field(default_factory=dict)  # old_values, returns (ppo)
    stats: dict = field(default_factory=dict)  # logged for the step


class Rewards:
    """A rule-based function (`stage.reward`: a built-in or module:function) or a frozen reward model
    (`stage.reward=model`, `stage.reward_model=<an rm run>`)."""

    def __init__(self, cfg: DictConfig, tokenizer) -> None:
        s = cfg.stage
        self.name, self.scorer, self.fn = s.reward, None, None
        if s.reward == "model":
            from llmx.engine.score import frozen, load_score_model

            self.scorer = frozen(load_score_model(cfg.model, s.reward_model, tokenizer, cfg.seed))
        else:
            from llmx.rl.rewards import load_reward_fn

            self.fn = load_reward_fn(s.reward)

    def __call__(self, prompts, responses, references, batch: Batch) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer.score(batch.input_ids, batch.attention_mask).numpy().astype("float64")
        from llmx.rl.rewards import checked_rewards

        return np.asarray(checked_rewards(self.fn, self.name, prompts, responses, references), "float64")


def rollout_logps(batch: Batch, policy):
    targets = batch.input_ids[:, 1:]
    return L.token_logps(logits_of(policy.model, batch), targets), L.token_logps(policy.reference_logits(batch), targets)


def global_mean(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of per-row values over every rank's rows."""
    s = all_sum(np.array([values.sum(), (values ** 2).sum(), values.size], "float64"))
    mean = s[0] / max(s[2], 1)
    return float(mean), float(np.sqrt(max(s[1] / max(s[2], 1) - mean ** 2, 0.0)))


def response_stats(exp_batch: Batch, rewards: np.ndarray, kl_tokens) -> dict:
    lengths = exp_batch.actions.sum(axis=1).numpy().astype("float64")
    kl_rows = (kl_tokens * exp_batch.actions).sum(axis=1).numpy().astype("float64")
    reward_mean, reward_std = global_mean(rewards)
    return {"reward_mean": round(reward_mean, 6), "reward_std": round(reward_std, 6),
            "kl": round(global_mean(kl_rows)[0], 6), "response_length": round(global_mean(lengths)[0], 4)}


def step(loss, params: list, optimizer, scheduler=None) -> None:
    loss.backward()
    sync_grads(params)
    optimizer.step()
    optimizer.clear_grad()
    if scheduler is not None:
        scheduler.step()


def mini_batch_tokens(mb: Batch):
    """Response tokens of the whole data-parallel mini-batch (the divisor of token means)."""
    return all_sum(mb.actions.sum())


class Algorithm:
    """What the loop (llmx.rl.loop.train) calls. `experience` turns a rollout batch and its rewards into
    advantages; `update` takes one optimizer step on some of its rows and returns that step's stats."""

    def __init__(self, stage) -> None:
        self.s = stage

    def setup(self, cfg, ctx, policy) -> None:
        self.reward_source = Rewards(cfg, policy.tokenizer)

    def rewards(self, prompts, responses, references, batch: Batch, policy) -> np.ndarray:
        return self.reward_source(prompts, responses, references, batch)

    def experience(self, batch: Batch, rewards: np.ndarray, policy) -> Experience:
        raise NotImplementedError

    def update(self, exp: Experience, rows: list, policy) -> dict:
        raise NotImplementedError

    def save(self, folder) -> None:
        """Write the algorithm's own state into a checkpoint being written (the actor's is the loop's); called
        on each tensor-parallel rank of the first data-parallel rank (llmx.rl.loop.shard names its files)."""

    def load(self, folder) -> None:
        """Read back what save wrote."""

    def export(self, ctx, policy) -> dict:
        """Write what the run leaves besides the actor; summary entries."""
        return {"reward": self.s.reward}
