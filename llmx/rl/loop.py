"""The training loop ppo and grpo share: build the policy (and its frozen reference), walk the prompts,
generate rollouts, let the algorithm (llmx.rl.ppo / llmx.rl.grpo) turn them into advantages and losses,
step the optimizer, log, checkpoint, resume, measure the held-out reward before and after, export.

Data parallel (`parallel=dp2`): each rank generates and trains on its share of every mini-batch; losses
are sums over the rank's rows divided by global counts, and gradients are summed over ranks before the
step, so a step computes what one process computes on the whole batch. Held-out measurements are split
over ranks the same way and summed.

Tensor parallel (`parallel=tp2`, with dp): the ranks of a tensor-parallel group hold one model split in
two; they roll out the same prompts with the same seeds through the engine (whose logits gather the whole
vocabulary), so they see the same rows, and the losses read whole-vocabulary logits too. "Ranks" above are
the data-parallel ranks; the global gradient norm sums the split parameters' squares over the group and
counts a replicated parameter once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist
from omegaconf import DictConfig

from llmx.console import say
from llmx.engine.allocator import keep_freed_memory
from llmx.engine.distributed import barrier
from llmx.engine.state_files import load_state, restore_rng, rng_state, save_state
from llmx.experiment import atomic_write_json
from llmx.ops import vocab
from llmx.rl.config import rollout_n
from llmx.rl.rollout import Batch, generate, logits_of, make_batch, sample_seed


# ------------------------------------------------------------------------------------------ ranks


def world() -> tuple[int, int]:
    """This process's data-parallel rank and the number of data-parallel ranks (the ranks of one
    tensor-parallel group share a rank: they hold one model between them)."""
    from llmx.engine.distributed import hybrid_group

    hcg = hybrid_group()
    if hcg is None:
        return dist.get_rank(), dist.get_world_size()
    return hcg.get_data_parallel_rank(), hcg.get_data_parallel_world_size()


def _dp_group():
    from llmx.engine.distributed import hybrid_group

    hcg = hybrid_group()
    return None if hcg is None else hcg.get_data_parallel_group()


def all_sum(x):
    """Sum of a tensor (or number) over the data-parallel ranks; the value itself in one process."""
    if world()[1] == 1:
        return x
    t = x if isinstance(x, paddle.Tensor) else paddle.to_tensor(np.asarray(x, "float64"))
    t = t.detach().clone()
    dist.all_reduce(t, group=_dp_group())
    return t if isinstance(x, paddle.Tensor) else t.numpy()


def sync_grads(params: list) -> None:
    """Sum every gradient over the data-parallel ranks (one flat all-reduce)."""
    if world()[1] == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = paddle.concat([g.reshape([-1]) for g in grads])
    dist.all_reduce(flat, group=_dp_group())
    offset = 0
    for g in grads:
        n = int(np.prod(g.shape))
        g.set_value(flat[offset:offset + n].reshape(g.shape))
        offset += n


def local_prompts(prompts_per_step: int, mini_prompts: int, rank: int, size: int) -> list[int]:
    """Indices (into the step's global prompt batch) this rank rolls out: its share of every mini-batch,
    so that mini-batch k over all ranks is global prompts [k*mini, (k+1)*mini) as in one process."""
    share = mini_prompts // size
    return [k * mini_prompts + rank * share + j for k in range(prompts_per_step // mini_prompts) for j in range(share)]


# ------------------------------------------------------------------------------------------ policy


class Policy:
    """The actor being trained and its frozen reference: a second copy of the starting weights, or for a
    LoRA actor the same weights with the adapters switched off (one copy of the base)."""

    def __init__(self, cfg: DictConfig, ctx) -> None:
        from llmx.engine import model as models
        from llmx.engine.checkpoint import adapter_base
        from llmx.engine.peft import wrap_peft

        s = cfg.stage
        self.lora = s.peft.method == "lora"
        self.tokenizer = models.build_tokenizer(cfg.model)
        model = models.build_model(cfg.model, self.tokenizer, cfg.seed)
        self.base_ref = adapter_base(cfg.model.name_or_path, model, self.tokenizer, ctx) if self.lora else None
        self.reference = None
        if not self.lora:
            from llmx.engine.score import frozen

            self.reference = frozen(models.build_model(cfg.model, self.tokenizer, cfg.seed))
        self.model = wrap_peft(model, cfg, self.base_ref)
        self.model.train()
        self.params = [p for p in self.model.parameters() if not p.stop_gradient]
        self.optimizer, self.scheduler = optimizer(s.train, self.params, total_updates(s))

    def reference_logits(self, batch: Batch):
        if self.reference is not None:
            return logits_of(self.reference, batch)
        from llmx.engine.peft import adapters_disabled

        with adapters_disabled(self.model):
            return logits_of(self.model, batch)

    def trainable_state(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if not p.stop_gradient}


def total_updates(s: DictConfig) -> int:
    rows = s.rollout.prompts_per_step * rollout_n(s)
    return s.train.max_steps * s.update_iters * (rows // s.train.batch_size)


def optimizer(t: DictConfig, params: list, total: int):
    from paddlenlp.trainer.trainer_utils import get_scheduler

    scheduler = get_scheduler(t.lr_scheduler, learning_rate=t.lr, num_warmup_steps=t.warmup_steps,
                              num_training_steps=max(total, 1))
    clip = paddle.nn.ClipGradByGlobalNorm(t.max_grad_norm) if t.max_grad_norm > 0 else None
    hcg = _tensor_parallel_group()
    if clip is not None and hcg is not None:
        clip = TensorParallelClip(t.max_grad_norm, hcg)
    return paddle.optimizer.AdamW(learning_rate=scheduler, parameters=params, weight_decay=t.weight_decay,
                                  grad_clip=clip), scheduler


class TensorParallelClip(paddle.nn.ClipGradByGlobalNorm):
    """Clipping by the global norm of a tensor-parallel model: a split parameter's squares are summed over the
    group, a replicated one counted once. fleet's HybridParallelClipGrad computes it; the optimizer takes
    only ClipGradBase's subclasses, hence this wrapper."""

    def __init__(self, max_norm: float, hcg) -> None:
        from paddle.distributed.fleet.meta_optimizers.dygraph_optimizer.hybrid_parallel_optimizer import (
            HybridParallelClipGrad)

        super().__init__(max_norm)
        self.hybrid = HybridParallelClipGrad(paddle.nn.ClipGradByGlobalNorm(max_norm), hcg)

    def _dygraph_clip(self, params_grads):
        return self.hybrid._dygraph_clip(params_grads)


def _tensor_parallel_group():
    """fleet's groups when the model is split over tensor-parallel ranks; None otherwise."""
    from llmx.engine.distributed import hybrid_group

    hcg = hybrid_group()
    return hcg if hcg is not None and hcg.get_model_parallel_world_size() > 1 else None


# ------------------------------------------------------------------------------------------ prompts


class Prompts:
    """Token ids of the prompts (as SFT renders them), their texts and reference answers."""

    def __init__(self, lines, tokenizer, max_prompt_length: int) -> None:
        from llmx.data.infer import prompt_ids

        self.ids = [prompt_ids(tokenizer, line.dialogue)[-max_prompt_length:] for line in lines]
        self.texts = [line.dialogue.last_user() for line in lines]
        self.references = [line.reference for line in lines]

    def __len__(self) -> int:
        return len(self.ids)


def step_prompts(n: int, per_step: int, step: int, seed: int) -> list[int]:
    """The global prompt indices of a step: consecutive slices of a seeded permutation per epoch."""
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(position, n)
        out.append(int(np.random.RandomState(seed + epoch).permutation(n)[i]))
    return out


# ------------------------------------------------------------------------------------------ the loop


def measure(policy: Policy, algo, prompts: Prompts, cfg: DictConfig) -> dict:
    """Greedy responses to the held-out prompts: the mean reward, exact match where references exist, and
    the mean per-token KL(policy || reference) of the next-token distributions along them."""
    rank, size = world()
    limit = len(prompts) if cfg.stage.data.eval_prompts == -1 else min(cfg.stage.data.eval_prompts, len(prompts))
    mine = list(range(rank, limit, size))
    ids = [prompts.ids[i] for i in mine]
    out = generate(policy.model, policy.tokenizer, ids, [0] * len(ids), cfg.stage.rollout, greedy=True)
    batch = make_batch(ids, out.tokens, policy.tokenizer.pad_token_id)
    refs = [prompts.references[i] for i in mine]
    with paddle.no_grad():
        rewards = algo.rewards([prompts.texts[i] for i in mine], out.texts, refs, batch, policy)
        # (logits_of's logits hold the whole vocabulary already: engine.logits.token_kl would gather them again)
        per_token = vocab.kl(logits_of(policy.model, batch), policy.reference_logits(batch))
        kl, kl_tokens = float((per_token * batch.actions.astype(per_token.dtype)).sum()), int(batch.actions.sum())
    from llmx.rl.rewards import exact_match

    matches = exact_match(None, out.texts, refs)
    sums = all_sum(np.array([float(np.sum(rewards)), len(mine), kl, kl_tokens, sum(matches),
                             sum(r is not None for r in refs)]))
    result = {"reward": sums[0] / max(sums[1], 1), "kl": sums[2] / max(sums[3], 1)}
    if sums[5]:
        result["exact_match"] = sums[4] / sums[5]
    return {k: round(float(v), 6) for k, v in result.items()}


def train(cfg: DictConfig, ctx, algo) -> dict:
    from llmx.engine.checkpoint import export_result
    from llmx.engine.peft import count_parameters, process_parameters
    from llmx.engine.trainer import resume_point

    exp, s, t = ctx.experiment, cfg.stage, cfg.stage.train
    if ctx.runtime.device == "cpu":  # each step reuses the host memory the last one freed, as fit() does
        keep_freed_memory()
    rank, size = world()
    params_before = process_parameters()
    policy = Policy(cfg, ctx)
    algo.setup(cfg, ctx, policy)
    train_prompts = Prompts(ctx.inputs["train"], policy.tokenizer, s.data.max_prompt_length)
    eval_prompts = Prompts(ctx.inputs["eval"], policy.tokenizer, s.data.max_prompt_length)
    n = rollout_n(s)
    mini_prompts = t.batch_size // n
    mine = local_prompts(s.rollout.prompts_per_step, mini_prompts, rank, size)

    start = 0
    resume = resume_point(exp)
    if resume is not None:
        start = load_checkpoint(resume, policy, algo)
    before = {}
    if len(eval_prompts):
        before = exp.measured_before(lambda: {f"eval_{k}_before": v for k, v in
                                              measure(policy, algo, eval_prompts, cfg).items()}, resume is not None)

    barrier()  # every rank built its models: the loop's collectives wait only gloo's 30 s
    for step in range(start, t.max_steps):
        global_idx = step_prompts(len(train_prompts), s.rollout.prompts_per_step, step, cfg.seed)
        chosen = [global_idx[i] for i in mine]
        ids = [train_prompts.ids[i] for i in chosen for _ in range(n)]
        seeds = [sample_seed(cfg.seed, step, mine[k] * n + j) for k in range(len(mine)) for j in range(n)]
        t0 = time.perf_counter()
        out = generate(policy.model, policy.tokenizer, ids, seeds, s.rollout)
        batch = make_batch(ids, out.tokens, policy.tokenizer.pad_token_id)
        t1 = time.perf_counter()
        with paddle.no_grad():
            texts = [train_prompts.texts[i] for i in chosen for _ in range(n)]
            refs = [train_prompts.references[i] for i in chosen for _ in range(n)]
            experience = algo.experience(batch, algo.rewards(texts, out.texts, refs, batch, policy), policy)
        stats = []
        rows_per_mini = (mini_prompts // size) * n  # this rank's rows of one mini-batch
        for _ in range(s.update_iters):
            for k in range(0, len(ids), rows_per_mini):
                stats.append(algo.update(experience, list(range(k, k + rows_per_mini)), policy))
        t2 = time.perf_counter()
        record = {"step": step + 1, **experience.stats, "lr": policy.scheduler.get_lr(),
                  "rollout_s": round(t1 - t0, 4), "train_s": round(t2 - t1, 4),
                  "generated_tokens": int(all_sum(float(out.generated)))}
        record.update({k: round(float(np.mean([st[k] for st in stats])), 6) for k in stats[0]})
        record["loss"] = record["policy_loss"]
        exp.log_metrics(record)
        if (step + 1) % t.logging_steps == 0 or step + 1 == t.max_steps:
            say("step %d/%d: reward %.4f  kl %.4f  policy loss %.4f  response %.1f tokens  (rollout %.2f s, train %.2f s)",
                step + 1, t.max_steps, record["reward_mean"], record["kl"], record["policy_loss"],
                record["response_length"], t1 - t0, t2 - t1)
        if (step + 1) % t.save_steps == 0 or step + 1 == t.max_steps:
            save_checkpoint(exp, step + 1, policy, algo, t.keep_checkpoints)

    summary = {"stage": s.runner + ("-lora" if policy.lora else ""), "steps": t.max_steps,
               "resumed_from": resume.name if resume else None,
               "trainable_params": count_parameters(policy.model, trainable_only=True),
               "total_params": count_parameters(policy.model),
               "reference": "adapters disabled" if policy.lora else "model copy",
               "process_params": process_parameters() - params_before, **before}
    rows = [r for r in exp.read_metrics() if "reward_mean" in r]
    if rows:
        summary.update(final_reward_mean=rows[-1]["reward_mean"], final_kl=rows[-1]["kl"], final_loss=rows[-1]["loss"])
        seconds = sum(r["rollout_s"] + r["train_s"] for r in rows)
        summary["rollout_share"] = round(sum(r["rollout_s"] for r in rows) / max(seconds, 1e-9), 4)
        summary["rollout_tokens_per_s"] = round(sum(r["generated_tokens"] for r in rows) /
                                                max(sum(r["rollout_s"] for r in rows), 1e-9), 2)
    if len(eval_prompts):
        after = {f"eval_{k}_after": v for k, v in measure(policy, algo, eval_prompts, cfg).items()}
        exp.log_metrics({"step": t.max_steps, **after})
        summary.update(after)
        summary["kl_to_reference"] = after["eval_kl_after"]
    summary.update(export_result(policy.model, policy.tokenizer, ctx, policy.base_ref))
    summary.update(algo.export(ctx, policy))
    return summary


# ------------------------------------------------------------------------------------------ checkpoints


def optimizer_state(opt, named: dict) -> dict:
    """The optimizer's state with its keys under the parameters' structured names: Paddle keys them by
    `param.name` (embedding_13.w_0_moment1_0), a counter that differs in a process that builds the models
    in another order (or builds more of them)."""
    to_structured = {p.name + "_": n + "/" for n, p in named.items()}
    out = {}
    for key, value in opt.state_dict().items():
        prefix = next((pre for pre in to_structured if isinstance(key, str) and key.startswith(pre)), None)
        out[to_structured[prefix] + key[len(prefix):] if prefix else key] = value
    return out


def load_optimizer_state(opt, named: dict, state: dict) -> None:
    to_current = {n + "/": p.name + "_" for n, p in named.items()}
    renamed = {}
    for key, value in state.items():
        prefix = next((pre for pre in to_current if isinstance(key, str) and key.startswith(pre)), None)
        renamed[to_current[prefix] + key[len(prefix):] if prefix else key] = value
    opt.set_state_dict(renamed)


def shard(stem: str) -> str:
    """The file name of this process's part of a split model's state: `actor.pdparams` whole, and
    `actor.tp01.pdparams` for tensor-parallel rank 1 of 2 (a checkpoint resumes under its own layout)."""
    hcg = _tensor_parallel_group()
    name, ext = stem.split(".", 1)
    return stem if hcg is None else f"{name}.tp{hcg.get_model_parallel_rank():02d}.{ext}"


def save_checkpoint(exp, step: int, policy: Policy, algo, keep: int) -> None:
    """Actor (trainable weights), optimizer and scheduler, the algorithm's state (critic, KL coefficient,
    reward statistics) and each rank's RNG, written to a staging dir and committed by rank 0. Model state is
    written by the first data-parallel rank (each tensor-parallel rank its shard: llmx.rl.loop.shard)."""
    rank, first_dp = dist.get_rank(), world()[0] == 0
    staging = exp.staging_dir() / f"step-{step}"
    with exp.writing_checkpoint(step, staging):
        if rank == 0:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier()
        if first_dp:
            save_state(policy.trainable_state(), staging / shard("actor.safetensors"))
            save_state(optimizer_state(policy.optimizer, policy.trainable_state()),
                       staging / shard("actor_optimizer.safetensors"))
            algo.save(staging)
        if rank == 0:
            atomic_write_json(staging / "scheduler.json", policy.scheduler.state_dict())
        atomic_write_json(staging / f"rng.rank{rank}.json", rng_state())
        barrier()
        if rank == 0:
            final = exp.commit_checkpoint(staging, step, keep)
            say("checkpoint committed: %s", final)
    barrier()


def load_checkpoint(path: Path, policy: Policy, algo) -> int:
    from llmx.experiment import Experiment

    state = load_state(path / shard("actor.safetensors"))
    for name, param in policy.trainable_state().items():
        param.set_value(state[name])
    load_optimizer_state(policy.optimizer, policy.trainable_state(), load_state(path / shard("actor_optimizer.safetensors")))
    policy.scheduler.set_state_dict(json.loads((path / "scheduler.json").read_text()))
    algo.load(path)
    rng_file = path / f"rng.rank{dist.get_rank()}.json"
    if rng_file.is_file():
        restore_rng(json.loads(rng_file.read_text()))
    return Experiment.checkpoint_step(path)
