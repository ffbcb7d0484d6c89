"""The algebra of PPO and GRPO on [rows, positions] tensors with a 0/1 mask of the response tokens.

Conventions: position t of a row is an action (a response token) where mask[t] = 1; a row's actions
are contiguous. `logp` are the log-probabilities of the taken tokens. Written for paddle tensors;
tests check each function against an independent numpy computation.
"""
from __future__ import annotations

import paddle

from llmx.ops import vocab


def masked_sum(x, mask, axis=None):
    return (x * mask).sum(axis=axis)


def masked_mean(x, mask, axis=None, count=None):
    """Mean over the masked entries; with `count`, the masked sum divided by it (a global token count)."""
    if count is not None:
        return masked_sum(x, mask, axis) / count
    return masked_sum(x, mask, axis) / paddle.clip(mask.sum(axis=axis), min=1.0)


def whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8, reduce=None):
    """(x - mean) / std over the masked entries (biased variance); with shift_mean=False the mean is
    added back, so only the scale changes. `reduce` sums a tensor over data-parallel ranks (global moments)."""
    reduce = reduce or (lambda v: v)
    n = paddle.clip(reduce(mask.sum()), min=1.0)
    mean = reduce(masked_sum(x, mask)) / n
    var = reduce(masked_sum((x - mean) ** 2, mask)) / n
    out = (x - mean) * paddle.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016) along each row's actions. After a row's
    last action the value is 0 (the episode ends). Returns (advantages, returns = advantages + values)."""
    T = rewards.shape[1]
    next_value = paddle.zeros_like(rewards[:, 0])
    next_adv = paddle.zeros_like(rewards[:, 0])
    next_mask = paddle.zeros_like(rewards[:, 0])
    out = [None] * T
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        adv = (delta + gamma * lam * next_adv * next_mask) * m
        out[t] = adv
        # a position outside the response passes nothing back (prompt and padding)
        next_value, next_adv, next_mask = values[:, t], adv, m
    advantages = paddle.stack(out, axis=1)
    return advantages, (advantages + values) * mask


def clipped_surrogate(logp, old_logp, advantages, clip: float):
    """Per token: max(-A r, -A clip(r, 1-c, 1+c)) with r = p / p_old; and where the clipped term won."""
    ratio = paddle.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * paddle.clip(ratio, 1.0 - clip, 1.0 + clip)
    return paddle.maximum(unclipped, clipped), (clipped > unclipped).astype("float32")


def policy_loss(logp, old_logp, advantages, mask, clip: float, count=None):
    """PPO's clipped surrogate averaged over the masked tokens (or summed and divided by `count`, the
    tokens of the whole data-parallel mini-batch); also the fraction of tokens clipped."""
    loss, was_clipped = clipped_surrogate(logp, old_logp, advantages, clip)
    return masked_mean(loss, mask, count=count), masked_mean(was_clipped, mask, count=count)


def value_loss(values, old_values, returns, mask, clip: float, count=None):
    """The critic's clipped squared error (new values kept within `clip` of the rollout's), halved."""
    clipped_values = old_values + paddle.clip(values - old_values, -clip, clip)
    a, b = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(paddle.maximum(a, b), mask, count=count)
    return loss, masked_mean((b > a).astype("float32"), mask, count=count)


def sequence_mean(x, mask, rows=None):
    """GRPO's aggregation: each row's mean over its masked tokens, then the mean over rows (or the sum
    over rows divided by `rows`, those of the whole data-parallel mini-batch)."""
    per_row = (x * mask).sum(axis=1) / paddle.clip(mask.sum(axis=1), min=1.0)
    return per_row.sum() / (rows if rows is not None else per_row.shape[0])


def kl_estimate(logp, ref_logp, kind: str):
    """Per-token estimates of KL(policy || reference) from the sampled tokens' log-probabilities
    (Schulman's k1, k2, k3): k1 = log r, k2 = (log r)^2 / 2, k3 = r' - 1 - log r' with r' = ref/policy."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return paddle.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2, k3)")


def group_advantages(rewards, group_size: int, eps: float = 1e-6, scale: bool = True):
    """GRPO: each sample's reward minus the mean of its prompt's group (rows i*n .. i*n+n-1), divided
    by the group's standard deviation (unbiased, as in DeepSeekMath) when `scale`."""
    g = rewards.reshape([-1, group_size])
    centered = g - g.mean(axis=1, keepdim=True)
    if scale:
        std = paddle.sqrt((centered ** 2).sum(axis=1, keepdim=True) / max(group_size - 1, 1))
        centered = centered / (std + eps)
    return centered.reshape([-1])


def entropy(logits, mask):
    """Mean entropy of the next-token distributions at the masked positions."""
    return masked_mean(vocab.entropy(logits), mask)


def token_logps(logits, tokens):
    """log p(tokens) under `logits` ([rows, T, vocab] -> [rows, T])."""
    return vocab.token_logprobs(logits, tokens)


class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019): moved towards the value that keeps the
    measured KL near `target`, by at most 20% of the error per `horizon` samples."""

    def __init__(self, coeff: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = coeff, target, horizon

    def update(self, kl: float, samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * samples / self.horizon
