"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022): actor, frozen reference, critic
(initialised from the reward model, or from the actor's backbone with a fresh head under a rule reward),
reward model or rule. Per rollout: the sequence's score (normalised by running moments, clipped to
±clip_range_score) at the last response token, minus kl_coeff x the KL estimate per token (fixed, or adapted
towards kl_target); GAE; whitened advantages. Per mini-batch: the clipped surrogate (+ ptx_coeff x the LM loss
on SFT data) for the actor, the clipped value loss for the critic, each with its own optimizer."""
from __future__ import annotations

import json

import numpy as np
import paddle

from llmx.engine.state_files import load_state, save_state
from llmx.experiment import atomic_write_json
from llmx.rl import losses as L
from llmx.rl.algorithm import Algorithm, Experience, global_mean, mini_batch_tokens, response_stats, rollout_logps, step
from llmx.rl.loop import all_sum, load_optimizer_state, optimizer, optimizer_state, shard, total_updates, world
from llmx.rl.rollout import logits_of


class RunningMoments:
    """Mean and variance of every score seen so far (batches merged exactly, Chan et al.)."""

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0.0, 0.0, 1.0

    def update(self, mean: float, std: float, count: float) -> None:
        total = self.count + count
        delta = mean - self.mean
        m2 = self.var * self.count + std ** 2 * count + delta ** 2 * self.count * count / total
        self.mean, self.var, self.count = self.mean + delta * count / total, m2 / total, total


class PPO(Algorithm):
    def __init__(self, stage) -> None:
        super().__init__(stage)
        self.kl = L.KLController(stage.kl_coeff, stage.kl_target, stage.kl_horizon)
        self.moments = RunningMoments()

    def setup(self, cfg, ctx, policy) -> None:
        from llmx.engine import model as models
        from llmx.engine.score import ScoreModel, load_score_model

        s = self.s
        super().setup(cfg, ctx, policy)
        if s.reward_model is not None:  # the critic starts as the reward model (its own trainable copy)
            self.critic = load_score_model(cfg.model, s.reward_model, policy.tokenizer, cfg.seed)
        else:
            backbone = models.build_model(cfg.model, policy.tokenizer, cfg.seed)
            paddle.seed(cfg.seed)  # the head's init, as stage=rm's: not what building the backbone drew (layouts differ)
            self.critic = ScoreModel(backbone)
        self.critic.train()
        self.critic_params = [p for p in self.critic.parameters() if not p.stop_gradient]
        t = s.train.copy()
        t.lr = s.critic_lr
        self.critic_opt, self.critic_sched = optimizer(t, self.critic_params, total_updates(s))
        self.ptx = None
        if s.ptx_coeff > 0:
            from llmx.data.formats import read_sft
            from llmx.data.sft import SftEncoder

            encoder = SftEncoder(policy.tokenizer, s.ptx_max_length, s.ptx_max_length - 1)
            self.ptx = [encoder.encode(c) for c in read_sft(s.ptx_data)]
            self.ptx_position = world()[0]

    def experience(self, batch, scores: np.ndarray, policy) -> Experience:
        s = self.s
        old_logp, ref_logp = rollout_logps(batch, policy)
        old_values = self.critic(batch.input_ids, attention_mask=batch.attention_mask)[:, :-1] * batch.actions
        stats = response_stats(batch, scores, old_logp - ref_logp)
        self.moments.update(*global_mean(scores), float(all_sum(np.float64(len(scores)))))
        if s.normalize_reward:
            scores = (scores - self.moments.mean) / max(np.sqrt(self.moments.var), 1e-8)
        scores = np.clip(scores, -s.clip_range_score, s.clip_range_score)
        kl = L.kl_estimate(old_logp, ref_logp, s.kl_estimator) * batch.actions
        rewards = -self.kl.value * kl
        last = batch.actions.sum(axis=1).astype("int64") + batch.actions.argmax(axis=1) - 1  # each row's last action
        bonus = paddle.zeros_like(rewards)
        bonus = paddle.put_along_axis(bonus, last.unsqueeze(-1), paddle.to_tensor(scores.astype("float32")).unsqueeze(-1),
                                      axis=1)
        rewards = rewards + bonus * batch.actions
        advantages, returns = L.gae(rewards, old_values, batch.actions, s.gamma, s.lam)
        advantages = L.whiten(advantages, batch.actions, reduce=all_sum)
        stats["kl_coeff"] = round(self.kl.value, 6)
        stats["value_mean"] = round(global_mean((old_values.sum(1) / batch.actions.sum(1).clip(min=1)).numpy())[0], 6)
        self.kl.update(stats["kl"], int(all_sum(np.float64(len(scores)))))
        return Experience(batch, old_logp, ref_logp, advantages, {"old_values": old_values, "returns": returns}, stats)

    def _ptx_loss(self, policy, rows: int):
        from llmx.tokens import pad_batch

        size = world()[1]
        take = [self.ptx[(self.ptx_position + i * size) % len(self.ptx)] for i in range(rows)]
        self.ptx_position += rows * size
        b = pad_batch(take, policy.tokenizer.pad_token_id)
        out = policy.model(input_ids=paddle.to_tensor(b["input_ids"]), attention_mask=paddle.to_tensor(b["attention_mask"]),
                           labels=paddle.to_tensor(b["labels"]))
        return out[0] if isinstance(out, (tuple, list)) else out.loss

    def update(self, exp: Experience, rows: list, policy) -> dict:
        s = self.s
        idx = paddle.to_tensor(np.asarray(rows, "int64"))
        mb = exp.batch.rows(rows)
        old_logp, adv, old_values, returns = (paddle.index_select(t, idx) for t in
                                              (exp.old_logp, exp.advantages, exp.extra["old_values"], exp.extra["returns"]))
        tokens = mini_batch_tokens(mb)
        logits = logits_of(policy.model, mb)
        logp = L.token_logps(logits, mb.input_ids[:, 1:])
        pg_loss, clipfrac = L.policy_loss(logp, old_logp, adv, mb.actions, s.clip_range_ratio, count=tokens)
        actor_loss = pg_loss
        ptx = paddle.zeros([])
        if self.ptx is not None:
            ptx = self._ptx_loss(policy, len(rows)) / world()[1]
            actor_loss = actor_loss + s.ptx_coeff * ptx
        step(actor_loss, policy.params, policy.optimizer, policy.scheduler)
        values = self.critic(mb.input_ids, attention_mask=mb.attention_mask)[:, :-1]
        vf_loss, vf_clipfrac = L.value_loss(values, old_values, returns, mb.actions, s.clip_range_value, count=tokens)
        step(vf_loss, self.critic_params, self.critic_opt, self.critic_sched)
        with paddle.no_grad():
            approx_kl = L.masked_mean(0.5 * (logp - old_logp) ** 2, mb.actions, count=tokens)
            parts = all_sum(paddle.stack([pg_loss.detach(), vf_loss.detach(), clipfrac, vf_clipfrac,
                                          L.entropy(logits, mb.actions) * mb.actions.sum() / tokens, approx_kl,
                                          ptx.detach().astype("float32")]))
        names = ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "entropy", "approx_kl", "ptx_loss")
        return dict(zip(names, (float(v) for v in parts.numpy())))

    # -- checkpoints and export ---------------------------------------------------------------
    def _critic_state(self) -> dict:
        return {n: p for n, p in self.critic.named_parameters() if not p.stop_gradient}

    def save(self, folder) -> None:
        save_state(self._critic_state(), folder / shard("critic.safetensors"))
        save_state(optimizer_state(self.critic_opt, self._critic_state()), folder / shard("critic_optimizer.safetensors"))
        if paddle.distributed.get_rank() != 0:  # the rest is the same on every rank
            return
        atomic_write_json(folder / "critic_scheduler.json", self.critic_sched.state_dict())
        (folder / "ppo_state.json").write_text(json.dumps({
            "kl_coeff": self.kl.value, "moments": [self.moments.count, self.moments.mean, self.moments.var],
            "ptx_position": getattr(self, "ptx_position", 0)}))

    def load(self, folder) -> None:
        state = load_state(folder / shard("critic.safetensors"))
        for n, p in self._critic_state().items():
            p.set_value(state[n])
        load_optimizer_state(self.critic_opt, self._critic_state(), load_state(folder / shard("critic_optimizer.safetensors")))
        self.critic_sched.set_state_dict(json.loads((folder / "critic_scheduler.json").read_text()))
        saved = json.loads((folder / "ppo_state.json").read_text())
        self.kl.value = saved["kl_coeff"]
        self.moments.count, self.moments.mean, self.moments.var = saved["moments"]
        if self.ptx is not None:
            self.ptx_position = saved["ptx_position"]

    def export(self, ctx, policy) -> dict:
        from llmx.engine.checkpoint import export_model
        from llmx.engine.distributed import barrier
        from llmx.engine.score import save_head

        out = export_model(self.critic.lm, policy.tokenizer, ctx.experiment.dir / "critic", ctx.layout, ctx.runtime.is_main)
        if ctx.runtime.is_main:
            save_head(self.critic, out)
        barrier()
        return {**super().export(ctx, policy), "critic_dir": str(out), "final_kl_coeff": round(self.kl.value, 6)}
