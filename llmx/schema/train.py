"""The training loop every training stage shares, and the one entry their validation starts from."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from llmx.schema.checks import one_of, positive, require
from llmx.schema.data import check_data_config
from llmx.schema.model import model_family, quantized
from llmx.schema.peft import validate_peft

LR_SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    """The training loop of every training stage."""

    max_steps: int = 800  # -1: run `epochs` epochs
    epochs: float = 1.0
    batch_size: int = 16  # samples per micro-batch; batch_size * grad_accum samples per step, whatever the layout
    grad_accum: int = 1
    lr: float = 3e-3
    lr_scheduler: str = "cosine"
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 100
    eval_steps: int = 0  # also evaluate every N steps (0: only before and after); a search prunes trials from these
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 = keep all
    progress_bar: bool = True
    recompute: bool = False  # full recompute: keep each decoder layer's input only, rerun its forward in backward


def validate_training(cfg: DictConfig, data_kind: str) -> None:
    """What every stage that fine-tunes on examples checks first: a trainable model, its `data` block (read as
    `data_kind` data: sft, dpo, kto, rl), the training loop and the adapters."""
    validate_trainable(cfg)
    check_data_config(cfg.stage.data, data_kind)
    validate_train(cfg.stage.train)
    validate_peft(cfg)


def validate_trainable(cfg: DictConfig) -> None:
    """For stages that train the model: the family must be trainable by llmx, the weights floating point."""
    fam = model_family(cfg.model)
    require(not fam.not_trainable, "model.family", cfg.model.family, fam.not_trainable)
    require(fam.encoding == "causal" or cfg.stage.runner == "sft", "model.family", cfg.model.family,
            f"trains with stage=sft (and its adapters) only: llmx writes its {fam.encoding} encoding for SFT examples")
    require(not quantized(cfg.model), "model.name_or_path", cfg.model.name_or_path,
            "is a quantized checkpoint (integer weights): train the float model, and quantize after training")


def validate_train(t: DictConfig) -> None:
    require(t.max_steps == -1 or t.max_steps >= 1, "stage.train.max_steps", t.max_steps, "must be >= 1, or -1 to use epochs")
    require(t.max_steps != -1 or t.epochs > 0, "stage.train.epochs", t.epochs, "must be > 0 when max_steps=-1")
    positive("stage.train.batch_size", t.batch_size)
    positive("stage.train.grad_accum", t.grad_accum)
    require(t.lr > 0, "stage.train.lr", t.lr, "must be > 0")
    one_of("stage.train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS)
    positive("stage.train.warmup_steps", t.warmup_steps, 0)
    positive("stage.train.weight_decay", t.weight_decay, 0)
    require(t.max_grad_norm >= 0, "stage.train.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 disables clipping)")
    positive("stage.train.logging_steps", t.logging_steps)
    positive("stage.train.save_steps", t.save_steps)
    positive("stage.train.eval_steps", t.eval_steps, 0)
    positive("stage.train.keep_checkpoints", t.keep_checkpoints, 0)
