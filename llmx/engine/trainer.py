"""PaddleNLP's Trainer, wired to the experiment directory.

We keep PaddleNLP's training loop, optimizer, schedulers and (later) 4D
parallelism untouched. What we add is what the Trainer does not do:
- checkpoints are written to a staging name and renamed into
  `checkpoints/step-N` only when complete, with a `latest` pointer
  (the Trainer writes `checkpoint-N` in place, so a crash can leave a partial one);
- a data order that depends only on (seed, epoch), so a resumed run sees the
  same batches as an uninterrupted one;
- metrics.jsonl with tokens/s counted from real (non-pad) tokens.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import paddle
from omegaconf import DictConfig
from paddle.io import DistributedBatchSampler
from paddlenlp.trainer import Trainer, TrainerCallback, TrainingArguments

from llmx.data.sft import pad_batch
from llmx.experiment import Experiment

log = logging.getLogger(__name__)


def training_arguments(cfg: DictConfig, exp: Experiment, device: str, **extra) -> TrainingArguments:
    """The single mapping from llmx's stage + parallel config to PaddleNLP's TrainingArguments."""
    t, p = cfg.stage.train, cfg.parallel
    half = cfg.model.dtype if cfg.model.dtype != "float32" else None
    args = dict(
        output_dir=str(exp.staging_dir()),
        seed=cfg.seed,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=cfg.stage.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # pruning is ours: it must only ever see complete checkpoints
        evaluation_strategy="no",
        disable_tqdm=not t.progress_bar,
        report_to=["visualdl"],
        logging_dir=str(exp.dir / "visualdl"),
        dataloader_num_workers=0,  # the collator counts tokens in this process
        remove_unused_columns=False,
        device=device,
        bf16=half == "bfloat16",
        fp16=half == "float16",
        fp16_opt_level="O2" if half else "O1",
        tensor_parallel_degree=p.tp,
        pipeline_parallel_degree=p.pp,
        sharding_parallel_degree=p.sharding,
        sharding=f"stage{p.sharding_stage}" if p.sharding_stage else "",
        sequence_parallel=p.sequence_parallel,
        # Safetensors weights that from_pretrained loads directly. PaddleNLP's unified
        # checkpoint cannot save PrefixModelForCausalLM (no can_generate), so prefix
        # runs keep the Trainer's classic format.
        unified_checkpoint=cfg.stage.peft.method != "prefix",
    )
    args.update(extra)
    return TrainingArguments(**args)


class SeededBatchSampler(DistributedBatchSampler):
    """Shuffles with (seed, epoch) only; the Trainer calls set_epoch each epoch, on resume too."""

    def __init__(self, dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        super().__init__(dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=drop_last)
        self.seed = seed

    def __iter__(self):
        order = np.random.RandomState(self.seed + 1000003 * self.epoch).permutation(len(self.dataset))
        per_rank = order[self.local_rank::self.nranks]
        batch = []
        for i in per_rank:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch


class PadCollator:
    """Pads a batch and counts its real tokens (for tokens/s)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, features: Sequence[dict]) -> dict:
        batch = pad_batch(features, self.pad_id)
        self.tokens += int(batch["attention_mask"].sum())
        return {k: paddle.to_tensor(v) for k, v in batch.items()}


class MetricsCallback(TrainerCallback):
    """Appends one metrics.jsonl line per Trainer log: step, loss, lr, tokens/s, elapsed."""

    def __init__(self, exp: Experiment, collator: PadCollator, elapsed_before: float = 0.0) -> None:
        self.exp = exp
        self.collator = collator
        self.elapsed_before = elapsed_before  # seconds trained before a resume
        self.start = time.time()
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.last_tokens = self.collator.tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or "interval_runtime" not in logs:
            return
        tokens = self.collator.tokens - self.last_tokens
        self.last_tokens = self.collator.tokens
        record = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0), 4),
            "loss": logs["loss"],
            "lr": logs.get("learning_rate"),
            "tokens": tokens,
            "interval_s": logs["interval_runtime"],
            "tokens_per_s": round(tokens / max(logs["interval_runtime"], 1e-9), 2),
            "elapsed_s": round(self.elapsed_before + time.time() - self.start, 3),
        }
        self.exp.log_metrics(record)


class LlmxTrainer(Trainer):
    def __init__(self, *args, experiment: Experiment, keep_checkpoints: int, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.keep_checkpoints = keep_checkpoints
        self.data_seed = seed

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.args.should_save:  # the Trainer creates output_dir (our staging dir) even when it never saves
            shutil.rmtree(self.experiment.staging_dir(), ignore_errors=True)
        return result

    def _get_train_sampler(self):
        return SeededBatchSampler(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            seed=self.data_seed,
            num_replicas=self.args.dataset_world_size,
            rank=self.args.dataset_rank,
            drop_last=self.args.dataloader_drop_last,
        )

    def _save_checkpoint(self, model, metrics=None):
        staging = self.experiment.staging_dir()  # the Trainer's output_dir
        super()._save_checkpoint(model, metrics=metrics)  # writes staging/checkpoint-N completely
        if self.args.world_size > 1:
            paddle.distributed.barrier()
        if self.args.should_save:
            written = staging / f"checkpoint-{self.state.global_step}"
            final = self.experiment.commit_checkpoint(written, self.state.global_step, self.keep_checkpoints)
            log.info("checkpoint committed: %s", final)
        if self.args.world_size > 1:
            paddle.distributed.barrier()


def resume_point(exp: Experiment) -> Optional[Path]:
    """The checkpoint a re-launched run continues from (None for a fresh run)."""
    if exp.writer:  # whatever a killed run left half-written is never resumed from
        shutil.rmtree(exp.staging_dir(), ignore_errors=True)
    ckpt = exp.latest_checkpoint()
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
        exp.truncate_metrics_after(Experiment.checkpoint_step(ckpt))
    return ckpt


def elapsed_before(exp: Experiment) -> float:
    rows = exp.read_metrics()
    return float(rows[-1]["elapsed_s"]) if rows else 0.0
