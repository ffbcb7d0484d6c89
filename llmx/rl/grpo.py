"""GRPO (Shao et al. 2024, DeepSeekMath): `rollout_n` responses per prompt, each scored; a response's
advantage is its reward standardised within its prompt's group; no critic. The loss per token is the
clipped surrogate plus kl_coeff times the k3 estimate of KL(policy || reference), averaged over each
response's tokens and then over responses."""
from __future__ import annotations

import numpy as np
import paddle

from llmx.rl import losses as L
from llmx.rl.algorithm import Algorithm, Experience, mini_batch_tokens, response_stats, rollout_logps, step
from llmx.rl.loop import all_sum, world
from llmx.rl.rollout import logits_of


class GRPO(Algorithm):
    def experience(self, batch, rewards: np.ndarray, policy) -> Experience:
        s = self.s
        old_logp, ref_logp = rollout_logps(batch, policy)
        adv = L.group_advantages(paddle.to_tensor(rewards.astype("float32")), s.rollout_n, scale=s.scale_rewards)
        advantages = adv.unsqueeze(-1) * batch.actions
        stats = response_stats(batch, rewards, old_logp - ref_logp)
        groups = rewards.reshape(-1, s.rollout_n)
        stats["groups_all_equal"] = round(float(all_sum(np.float64((groups.std(1) == 0).sum()))
                                                / all_sum(np.float64(len(groups)))), 4)
        return Experience(batch, old_logp, ref_logp, advantages, stats=stats)

    def update(self, exp: Experience, rows: list, policy) -> dict:
        s = self.s
        idx = paddle.to_tensor(np.asarray(rows, "int64"))
        mb = exp.batch.rows(rows)
        old_logp, ref_logp, adv = (paddle.index_select(t, idx) for t in (exp.old_logp, exp.ref_logp, exp.advantages))
        logits = logits_of(policy.model, mb)
        logp = L.token_logps(logits, mb.input_ids[:, 1:])
        surrogate, clipped = L.clipped_surrogate(logp, old_logp, adv, s.clip_range_ratio)
        kl = L.kl_estimate(logp, ref_logp, s.kl_estimator)
        rows_global = len(rows) * world()[1]
        loss = L.sequence_mean(surrogate + s.kl_coeff * kl, mb.actions, rows_global)
        step(loss, policy.params, policy.optimizer, policy.scheduler)
        with paddle.no_grad():
            tokens = mini_batch_tokens(mb)
            parts = all_sum(paddle.stack([loss.detach(), L.sequence_mean(surrogate, mb.actions, rows_global),
                                          L.masked_mean(clipped, mb.actions, count=tokens),
                                          L.masked_mean(kl, mb.actions, count=tokens),
                                          L.entropy(logits, mb.actions) * mb.actions.sum() / tokens]))
        names = ("policy_loss", "surrogate", "clipfrac", "kl_loss", "entropy")
        return dict(zip(names, (float(v) for v in parts.numpy())))
