"""PaddleNLP's Trainer (or any subclass of it, such as trl's DPOTrainer), wired to the run dir.

We keep PaddleNLP's training loop, optimizer, schedulers and 4D parallelism untouched.
`LlmxTrainerMixin` adds what the Trainer does not do, to whichever Trainer class a stage
uses (`trainer_class(base)`):
- checkpoints are written to a staging name, marked complete by llmx and renamed into
  `checkpoints/step-N` only then, with a `latest` pointer (the Trainer writes
  `checkpoint-N` in place, so a crash can leave a partial one); the last step is always saved,
  so a finished run can be continued to more steps;
- a data order that depends only on (seed, epoch), so a resumed run sees the same batches
  as an uninterrupted one, and every layout the same samples per step;
- a step's loss that is the mean over every target token of its global batch, however the
  batch is cut into micro-batches, accumulation steps and data-parallel replicas (PaddleNLP
  averages per-micro-batch means: a replica or micro-batch with fewer target tokens would
  weigh more; the normalisation bug Hugging Face transformers fixed in 4.46);
- an eval loss that is the mean over every target token of the eval set, whatever the eval batch
  size and layout (engine.evaluation);
- metrics.jsonl with tokens/s counted from real (non-pad) tokens, plus whichever further keys of
  the Trainer's logs a stage names (`metric_keys`, e.g. trl's rewards/*).
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import paddle
from omegaconf import DictConfig, OmegaConf
from paddle.io import DistributedBatchSampler
from paddlenlp.trainer import Trainer, TrainerCallback, TrainingArguments

from llmx.console import say
from llmx.engine.checkpoint import name_single_model_class
from llmx.engine.distributed import barrier
from llmx.engine.evaluation import HeldOutSampler, HeldOutShare, TokenTally, target_tokens
from llmx.experiment import Experiment
from llmx.layout import Layout, train_batching
from llmx.tokens import GLOBAL_TARGETS, IGNORE_INDEX, LOCAL_TARGETS, NUM_TOKENS

log = logging.getLogger(__name__)


def parallel_arguments(layout: Layout) -> dict:
    """Degrees -> PaddleNLP's hybrid-parallel arguments (fleet itself is set up by
    engine.distributed; these tell the Trainer how to wrap the model and optimizer)."""
    args = dict(tensor_parallel_degree=layout.tp, pipeline_parallel_degree=layout.pp,
                sharding_parallel_degree=layout.sharding if layout.sharding > 1 else -1,
                sharding=f"stage{layout.sharding_stage}" if layout.sharding > 1 else "",
                sequence_parallel=bool(layout.sequence_parallel and layout.tp > 1))
    if layout.pp > 1 and layout.vpp == 1:
        args["pipeline_parallel_config"] = "disable_p2p_cache_shape"  # padded batches change shape
    return args


def training_arguments(cfg: DictConfig, exp: Experiment, device: str, args_class=TrainingArguments,
                       **extra) -> TrainingArguments:
    """The single mapping from llmx's stage.train + parallel config to PaddleNLP's TrainingArguments."""
    t, layout = cfg.stage.train, Layout.of(cfg.parallel)
    b = train_batching(cfg)
    half = cfg.model.dtype if cfg.model.dtype != "float32" else None
    eval_batch = OmegaConf.select(cfg, "stage.eval.batch_size") or b.micro_batch
    args = dict(
        output_dir=str(exp.staging_dir()),
        seed=cfg.seed,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=b.micro_batch,
        per_device_eval_batch_size=b.pipeline_eval_batch if layout.pp > 1 else eval_batch,
        gradient_accumulation_steps=b.accum,
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
        report_to=["none"],  # curves come from metrics.jsonl, through llmx.tracking (every stage, not only the Trainer's)
        dataloader_num_workers=0,  # the collator counts tokens in this process
        remove_unused_columns=False,
        device=device,
        bf16=half == "bfloat16",
        fp16=half == "float16",
        fp16_opt_level="O2" if half else "O1",
        recompute=bool(t.recompute),
        **parallel_arguments(layout),
        # Safetensors weights that from_pretrained loads directly. PaddleNLP's unified
        # checkpoint saves only full models and LoRA (not PrefixModelForCausalLM: no can_generate;
        # not LoKr, VeRA or ReFT: refused), so the other adapters keep the Trainer's classic format.
        unified_checkpoint=OmegaConf.select(cfg, "stage.peft.method") in ("none", "lora", None),
    )
    args.update(extra)
    return args_class(**args)


class SeededBatchSampler(DistributedBatchSampler):
    """Shuffles with (seed, epoch) only; the Trainer calls set_epoch each epoch, on resume too.

    With data-parallel replicas the shuffled order is cut into micro-batches and handed out
    in blocks of `accum` (one replica's share of a step): replica r takes blocks r, r+R, ...
    So one step of R replicas covers exactly the examples one process takes in R*accum
    micro-batches. Multi-process runs wrap the epoch around to whole global batches, since
    every rank must run the same number of steps (and a pipeline takes full micro-batches).

    With `targets` (target tokens per example) every index comes as (index, target tokens of
    its whole optimizer step, all replicas): `StepTargets` hands that to the collator."""

    def __init__(self, dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, accum: int = 1, pad_epoch: bool = False, targets=None):
        super().__init__(dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=drop_last)
        self.seed, self.accum, self.pad_epoch, self.targets = seed, accum, pad_epoch, targets

    def _batches(self) -> list[list]:
        order = np.random.RandomState(self.seed + 1000003 * self.epoch).permutation(len(self.dataset))
        if self.pad_epoch:
            step = self.batch_size * self.accum * self.nranks
            order = np.resize(order, -(-len(order) // step) * step)  # wraps around
        batches = [[int(i) for i in order[k:k + self.batch_size]] for k in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        blocks = [batches[k:k + self.accum] for k in range(0, len(batches), self.accum)]
        mine = []
        for k in range(self.local_rank, len(blocks), self.nranks):
            if self.targets is None:
                mine += blocks[k]
                continue
            step = blocks[k - self.local_rank:k - self.local_rank + self.nranks]  # this step's blocks, every replica
            total = int(sum(self.targets[i] for block in step for batch in block for i in batch))
            mine += [[(i, total) for i in batch] for batch in blocks[k]]
        return mine

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())


class StepTargets:
    """A dataset view whose items, asked for as (index, step targets), carry GLOBAL_TARGETS."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, total = key
            return {**self.base[index], GLOBAL_TARGETS: total}
        return self.base[key]


def target_token_counts(dataset) -> np.ndarray:
    """Target (loss-bearing) tokens of every example: the dataset's own `target_token_counts()`
    where it has one (pretraining: all seq_length; preference packs: their pairs, the units their
    loss averages over), else counted from the examples' labels."""
    own = getattr(dataset, "target_token_counts", None)
    if own is not None:
        return np.asarray(own())
    return np.array([int((np.asarray(item["labels"]) != IGNORE_INDEX).sum()) for item in dataset], dtype=np.int64)


def pipeline_layer(model):
    """The PipelineLayer inside `model` (a PEFT wrapper holds it as .model), or None."""
    from paddle.distributed.fleet.meta_parallel import PipelineLayer

    while model is not None and not isinstance(model, PipelineLayer):
        inner = model.__dict__.get("_sub_layers", {}).get("model")  # a wrapper's own sublayer, not a forwarded attribute
        model = inner
    return model


class TokenWeightedLoss(paddle.nn.Layer):
    """A pipeline's loss function, weighed like LlmxTrainerMixin.compute_loss weighs the others:
    the model's own mean over this micro-batch's target tokens, times those tokens, over the
    step's target tokens (scaled back for the pipeline's 1/accumulate_steps and the data-parallel
    average). Outside a training step (`step_targets` None) it is the model's own. A criterion whose
    labels are not token labels counts its micro-batch's targets itself (`targets(labels)`). An eval
    batch is weighed the same way, over its own target tokens (scaled back for 1/accumulate_steps
    only), so the pipeline returns the batch's token mean."""

    def __init__(self, criterion, scale: float) -> None:
        super().__init__()
        self.criterion, self.scale, self.step_targets = criterion, scale, None

    def forward(self, logits, labels):
        loss = self.criterion(logits, labels)
        if self.step_targets is None:
            return loss
        count = getattr(self.criterion, "targets", None)
        mine = count(labels) if count is not None else (labels != IGNORE_INDEX).astype(loss.dtype).sum()
        return loss * mine * (self.scale / self.step_targets)


def _over_data_replicas(args, values):
    """`values` (a number or an array) summed over all data-parallel replicas (dp x sharding ranks
    read different data; tp and pp ranks of one replica read the same). Every rank logs and
    evaluates at the same steps, so this collective is safe there."""
    if args.dataset_world_size <= 1:
        return values
    total = paddle.to_tensor(np.atleast_1d(values))
    if args.use_hybrid_parallel:
        from paddle.distributed import fleet

        hcg = fleet.get_hybrid_communicate_group()
        groups = [g for g, n in ((hcg.get_data_parallel_group(), args.data_parallel_degree),
                                 (hcg.get_sharding_parallel_group(), args.sharding_parallel_degree)) if n > 1]
    else:  # plain data parallel: the world
        groups = [None]
    for group in groups:
        paddle.distributed.all_reduce(total, group=group)
    return total.numpy() if np.ndim(values) else total.numpy()[0].item()


class MetricsCallback(TrainerCallback):
    """Appends one metrics.jsonl line per Trainer log: step, loss, lr, tokens/s, elapsed; and saves
    the last step, so a finished run can be continued to more steps."""

    def __init__(self, exp: Experiment, trainer: "LlmxTrainerMixin", elapsed_before: float = 0.0,
                 metric_keys: Sequence[str] = ()) -> None:
        self.exp = exp
        self.metric_keys = tuple(metric_keys)  # further keys of the Trainer's logs to record (e.g. trl's rewards/*)
        self.trainer = trainer
        self.elapsed_before = elapsed_before  # seconds trained before a resume
        self.start = time.time()
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.last_tokens = self.trainer.tokens_trained

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or "interval_runtime" not in logs:
            return
        tokens = _over_data_replicas(args, self.trainer.tokens_trained - self.last_tokens)
        self.last_tokens = self.trainer.tokens_trained
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
        record.update({k: logs[k] for k in self.metric_keys if k in logs})
        aux = self.trainer.take_router_aux_loss(args)
        if aux is not None:
            record["router_aux_loss"] = aux
        self.exp.log_metrics(record)


class LlmxTrainerMixin:
    """llmx's checkpoints, data order, token counting and metrics for a PaddleNLP Trainer class:
    list it before the Trainer class among the bases (`trainer_class` does)."""

    def __init__(self, *args, experiment: Experiment, keep_checkpoints: int, seed: int, elapsed_before: float = 0.0,
                 metric_keys: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.keep_checkpoints = keep_checkpoints
        self.data_seed = seed
        self.tokens_trained = 0  # real tokens of the micro-batches trained on, this process
        self.add_callback(MetricsCallback(experiment, self, elapsed_before, metric_keys))
        self._step_targets, self._local_targets, self._weighted_losses = None, None, []
        self._held_out = TokenTally()  # the running evaluation's token losses
        self._router_aux = []  # mixtures of experts: each micro-batch's router load-balancing loss since the last log
        # The step's loss as the mean over its target tokens, where the collator carries their count.
        self.token_weighted = bool(getattr(self.data_collator, "carries_global_targets", False)) and \
            self.train_dataset is not None
        # Undo the Trainer's (or the pipeline's) 1/accum and the data-parallel gradient average.
        self.loss_scale = self.args.gradient_accumulation_steps * self.args.dataset_world_size
        if self.token_weighted:
            self.train_dataset = StepTargets(self.train_dataset)
        pipeline = pipeline_layer(self.model)
        if pipeline is not None:  # weighed in token-weighted training steps and in evaluation
            pipeline._loss_fn = [TokenWeightedLoss(f, self.loss_scale) if f is not None else f
                                 for f in pipeline._loss_fn]
            self._weighted_losses = [f for f in pipeline._loss_fn if isinstance(f, TokenWeightedLoss)]

    def training_step(self, model, inputs, *args, **kwargs):
        self.tokens_trained += inputs.pop(NUM_TOKENS, 0)
        # the step's target tokens: for compute_loss, or for a pipeline's TokenWeightedLoss
        self._step_targets = inputs.pop(GLOBAL_TARGETS, None)
        self._local_targets = inputs.pop(LOCAL_TARGETS, None)
        for f in self._weighted_losses:
            f.step_targets = self._step_targets
        try:
            return super().training_step(model, inputs, *args, **kwargs)
        finally:
            self._keep_router_aux_loss(model)
            self._step_targets = self._local_targets = None
            for f in self._weighted_losses:
                f.step_targets = None

    def compute_loss(self, model, inputs, return_outputs=False):
        labels = inputs.get("labels")
        # trl's DPOTrainer/KTOTrainer define compute_loss(model, inputs) without return_outputs
        result = super().compute_loss(model, inputs, return_outputs=True) if return_outputs else \
            super().compute_loss(model, inputs)
        if self._step_targets is None:
            return result
        # the model's mean over this micro-batch's target tokens, back to their sum, over the step's
        mine = self._local_targets if self._local_targets is not None else int((labels != IGNORE_INDEX).sum())
        loss = (result[0] if return_outputs else result) * (mine * self.loss_scale / self._step_targets)
        return (loss, result[1]) if return_outputs else loss

    def _keep_router_aux_loss(self, model) -> None:
        """The auxiliary loss an MoE family's forward measured (llmx.families.moe.router_aux_loss_logged)."""
        while hasattr(model, "_layers"):  # (DataParallel and fleet's wrappers)
            model = model._layers
        aux = getattr(model, "llmx_router_aux_loss", None)
        if aux is not None:
            self._router_aux.append(float(aux))
            model.llmx_router_aux_loss = None

    def take_router_aux_loss(self, args) -> Optional[float]:
        """The mean router auxiliary loss of the micro-batches since the last call, over data-parallel
        replicas; None for models without one (and under pipeline parallelism, whose stages measure none)."""
        total = _over_data_replicas(args, np.array([sum(self._router_aux), len(self._router_aux)], dtype="float64"))
        self._router_aux = []
        return round(float(total[0] / total[1]), 6) if total[1] else None

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs.pop(NUM_TOKENS, None)
        inputs.pop(GLOBAL_TARGETS, None)
        inputs.pop(LOCAL_TARGETS, None)
        tokens = target_tokens(inputs)
        # a pipeline: the batch's token mean, not its micro-batches' mean (criterions of token labels)
        weighed = [f for f in self._weighted_losses if tokens and getattr(f.criterion, "targets", None) is None]
        for f in weighed:
            f.step_targets, f.scale = tokens, self.args.gradient_accumulation_steps
        try:
            result = super().prediction_step(model, inputs, *args, **kwargs)
        finally:
            for f in weighed:
                f.step_targets, f.scale = None, self.loss_scale
        if result[0] is not None:
            self._held_out.add(result[0], tokens)
        return result

    def evaluation_loop(self, *args, **kwargs):
        """PaddleNLP's loop, with `<prefix>_loss` the mean over every target token of the eval set
        (of every replica), where the batches have labels."""
        self._held_out = TokenTally()
        output = super().evaluation_loop(*args, **kwargs)
        loss_sum, tokens = _over_data_replicas(self.args, self._held_out.totals())
        if tokens > 0:
            output.metrics[f"{kwargs.get('metric_key_prefix', 'eval')}_loss"] = float(loss_sum / tokens)
        return output

    def get_eval_dataloader(self, eval_dataset=None):
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return super().get_eval_dataloader(HeldOutShare(eval_dataset) if eval_dataset is not None else None)

    def _get_eval_sampler(self, eval_dataset):
        return HeldOutSampler(eval_dataset, self.args.per_device_eval_batch_size, self.args.dataset_world_size,
                              self.args.dataset_rank, full=self.args.pipeline_parallel_degree > 1)

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.args.should_save:  # the Trainer creates output_dir (our staging dir) even when it never saves
            self.experiment.clear_partial_writes()
        return result

    def evaluate(self, *args, **kwargs):
        unwrapped = self.model_wrapped is self.model
        metrics = super().evaluate(*args, **kwargs)
        if unwrapped and self.args.pipeline_parallel_degree > 1:
            # Evaluating a pipeline model before training wraps it for eval only (no
            # distributed optimizer, no pipeline input split), and train() would keep that
            # wrapper; let train() wrap it properly.
            self.model_wrapped = self.model
        return metrics

    def _get_train_sampler(self):
        base = self.train_dataset.base if isinstance(self.train_dataset, StepTargets) else self.train_dataset
        return SeededBatchSampler(
            base,
            batch_size=self.args.per_device_train_batch_size,
            seed=self.data_seed,
            num_replicas=self.args.dataset_world_size,
            rank=self.args.dataset_rank,
            drop_last=self.args.dataloader_drop_last,
            accum=self.args.gradient_accumulation_steps,
            pad_epoch=self.args.world_size > 1,
            targets=target_token_counts(base) if self.token_weighted else None,
        )

    def _save_checkpoint(self, model, metrics=None):
        step = self.state.global_step
        written = self.experiment.staging_dir() / f"checkpoint-{step}"  # (the staging dir is the Trainer's output_dir)
        with self.experiment.writing_checkpoint(step, written):
            super()._save_checkpoint(model, metrics=metrics)  # writes staging/checkpoint-N completely
            barrier()
            if self.args.should_save:
                name_single_model_class(written)
                final = self.experiment.commit_checkpoint(written, step, self.keep_checkpoints)
                log.info("checkpoint committed: %s", final)
        barrier()


@functools.lru_cache(maxsize=None)
def trainer_class(base: type = Trainer) -> type:
    """`base` (Trainer or a subclass) with llmx's mixin."""
    return type(f"Llmx{base.__name__}", (LlmxTrainerMixin, base), {})


def resume_point(exp: Experiment) -> Optional[Path]:
    """The checkpoint a re-launched run continues from (None for a fresh run)."""
    exp.clear_partial_writes()  # whatever a killed run left half-written is never resumed from
    ckpt = exp.latest_checkpoint()
    if ckpt is not None:
        say("resuming from %s", ckpt)
        exp.truncate_metrics_after(Experiment.checkpoint_step(ckpt))
    else:
        exp.discard_earlier_attempts()
    return ckpt
