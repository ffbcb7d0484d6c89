"""The training run every training stage shares: resume, evaluate, train, evaluate, summarise.

A stage builds its model(s), datasets and collator, picks a Trainer class (PaddleNLP's
Trainer or a subclass such as trl's DPOTrainer) and calls `fit`; what is particular to
the stage (generations, exports) stays in the stage.
"""
from __future__ import annotations

from typing import Optional, Sequence

from omegaconf import DictConfig
from paddlenlp.trainer import Trainer

from llmx.engine.allocator import keep_freed_memory
from llmx.engine.distributed import barrier
from llmx.engine.peft import count_parameters
from llmx.engine.trainer import resume_point, trainer_class, training_arguments
from llmx.engine.trial import PeriodicEvaluation, SearchTrial


def summarise_metrics(rows: list[dict]) -> dict:
    """Loss and throughput over the whole run, from metrics.jsonl (so a resumed run counts
    the steps before the resume too; the Trainer's own average restarts)."""
    train = [r for r in rows if "loss" in r]
    out: dict = {}
    if train:
        seconds = sum(r["interval_s"] for r in train)
        out["train_loss"] = sum(r["loss"] for r in train) / len(train)
        out["final_loss"] = train[-1]["loss"]
        out["tokens_per_s"] = round(sum(r["tokens"] for r in train) / max(seconds, 1e-9), 2)
    before = [r["eval_loss"] for r in rows if "eval_loss" in r and r.get("step") == 0]
    if before:
        out["eval_loss_before"] = before[0]
    return out


def fit(cfg: DictConfig, ctx, model, train_set: Sequence, eval_set: Optional[Sequence], collator, tokenizer=None,
        evaluate: bool = True, trainer_base: type = Trainer, args=None, **trainer_kwargs):
    """Train `model` with `trainer_base` + llmx's mixin in the run directory; resume if it holds a
    checkpoint. With `evaluate`, the eval loss is measured before (fresh runs) and after training, and every
    `stage.train.eval_steps` steps (llmx.engine.trial, which also prunes a search's trials).
    `args` (TrainingArguments or a subclass) defaults to training_arguments(cfg); extra keyword
    arguments go to the Trainer (e.g. a reference model or criterion). Returns (trainer, summary)."""
    exp = ctx.experiment
    if ctx.runtime.device == "cpu":  # each step reuses the host memory the last one freed (llmx.engine.allocator)
        keep_freed_memory()
    resume = resume_point(exp)
    trainer = trainer_class(trainer_base)(
        model=model,
        args=args if args is not None else training_arguments(cfg, exp, ctx.runtime.device),
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=collator,
        tokenizer=tokenizer,
        experiment=exp,
        keep_checkpoints=cfg.stage.train.keep_checkpoints,
        seed=cfg.seed,
        elapsed_before=exp.elapsed_before() if resume else 0.0,
        **trainer_kwargs,
    )
    evaluate = evaluate and bool(eval_set)
    periodic = PeriodicEvaluation(cfg.stage.train.eval_steps, exp, SearchTrial.from_environment())
    if evaluate:
        trainer.add_callback(periodic)
    if evaluate and resume is None:
        exp.log_metrics({"step": 0, "eval_loss": trainer.evaluate()["eval_loss"]})
    barrier()  # ranks finish building at different times; the Trainer's first collective waits only 30 s
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    summary = {
        "steps": trainer.state.global_step,
        "epoch": round(float(trainer.state.epoch or 0), 4),
        "resumed_from": resume.name if resume else None,
        "trainable_params": count_parameters(model, trainable_only=True),
        "total_params": count_parameters(model),
        **periodic.summary(),
    }
    if evaluate and "pruned_at_step" not in summary:  # (a pruned run's last evaluation is its eval_loss)
        summary["eval_loss"] = trainer.evaluate()["eval_loss"]
        exp.log_metrics({"step": trainer.state.global_step, "eval_loss": summary["eval_loss"]})
    summary.update(summarise_metrics(exp.read_metrics()))
    return trainer, summary
