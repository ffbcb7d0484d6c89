"""DPO runner: preference alignment with PaddleNLP trl's DPOTrainer, any of its losses, full or LoRA.

Trains on preference data in any format of llmx.data.formats (PaddleNLP's {"src", "tgt", "response", "sort"}, TRL's
{"prompt", "chosen", "rejected"}, ...)
from `model.name_or_path` (a model directory, or an SFT run directory) or, without one, the
tiny random init. The held-out split is measured before and after (the model's own preference
accuracy and log-prob margin, the implicit reward, the KL to the reference); the run exports
the model, or the adapter (plus the merged model with merge_adapter). The algorithm is
llmx.align.preference (shared with the kto runner), the loss types and their rules llmx.align.options, the
encoding and batching llmx.data.preference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from llmx.align.options import LOSS_DEFINITIONS, LOSS_TYPES, NEED_REFERENCE, NO_REFERENCE, PADDLENLP_DIFFERS, SMOOTHS_LABELS
from llmx.schema import DataFiles, PeftConfig, TrainConfig, require, validate_preference
from llmx.data.formats import read_splits


@dataclass
class DataConfig(DataFiles):
    train: Any = "${asset:demo/dpo_train.jsonl}"
    eval: Optional[str] = "${asset:demo/dpo_eval.jsonl}"
    max_length: int = 128  # tokens per sequence: prompt + chosen + rejected (several pairs with zero padding)
    max_prompt_length: int = 64  # an over-long example keeps this many prompt tokens (from the right)


@dataclass
class EvalConfig:
    enabled: bool = True  # held-out preference accuracy, margins and KL before and after
    batch_size: int = 8  # sequences per forward when measuring


@dataclass
class Config:
    runner: str = "dpo"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss_type: str = "sigmoid"  # one of LOSS_TYPES
    loss_definition: str = "trl"  # trl: each loss as TRL (or its paper) defines it; paddlenlp: PaddleNLP's orpo and dpop
    beta: float = 0.1  # strength of the pull towards the reference (the loss's temperature); orpo: the odds-ratio term's weight
    label_smoothing: float = 0.0  # sigmoid/simpo: probability that a preference label is flipped (cDPO)
    simpo_gamma: float = 0.5  # simpo: target reward margin
    dpop_lambda: float = 50.0  # dpop: weight of the penalty on the chosen response's log-prob falling
    pref_loss_ratio: float = 1.0  # weight of the preference loss
    sft_loss_ratio: Optional[float] = None  # weight of the chosen responses' NLL; None: 1 for orpo, else 0
    reference_free: Optional[bool] = None  # None: true for simpo/orpo, false for the rest
    merge_adapter: bool = False  # LoRA only: also write the merged full model
    zero_padding: bool = True  # pack several pairs per sequence (trl's layout); false: one pair per row


def validate(cfg: DictConfig) -> None:
    s = cfg.stage
    validate_preference(cfg)
    require(s.loss_type in LOSS_TYPES, "stage.loss_type", s.loss_type, f"allowed: {', '.join(LOSS_TYPES)}")
    require(s.loss_definition in LOSS_DEFINITIONS, "stage.loss_definition", s.loss_definition,
            f"allowed: {', '.join(LOSS_DEFINITIONS)} (they differ for {', '.join(PADDLENLP_DIFFERS)})")
    if s.loss_type in NO_REFERENCE:
        require(s.reference_free is not False, "stage.reference_free", False,
                f"loss_type={s.loss_type} is reference-free (it builds no reference model); leave it unset or true")
    if s.loss_type in NEED_REFERENCE:
        require(not s.reference_free, "stage.reference_free", True,
                f"loss_type={s.loss_type} compares against a reference model; reference_free works with "
                f"{', '.join(t for t in LOSS_TYPES if t not in NEED_REFERENCE)}")
    require(0 <= s.label_smoothing < 0.5, "stage.label_smoothing", s.label_smoothing, "must be in [0, 0.5)")
    require(s.label_smoothing == 0 or s.loss_type in SMOOTHS_LABELS, "stage.label_smoothing", s.label_smoothing,
            f"only the sigmoid and simpo losses smooth labels (loss_type={s.loss_type})")
    for key in ("simpo_gamma", "dpop_lambda", "pref_loss_ratio"):
        require(s[key] >= 0, f"stage.{key}", s[key], "must be >= 0")
    require(s.sft_loss_ratio is None or s.sft_loss_ratio >= 0, "stage.sft_loss_ratio", s.sft_loss_ratio, "must be >= 0")


def prepare(cfg: DictConfig) -> dict:
    """Read and check the data files before any heavy import (paddle-free)."""
    d = cfg.stage.data
    return read_splits(d, "dpo", cfg.seed)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.align.preference import run_alignment
    from llmx.data.preference import encode_trl

    d = cfg.stage.data

    def encode(tokenizer):
        return tuple(encode_trl(ctx.inputs[split], tokenizer, d.max_length, d.max_prompt_length)
                     for split in ("train", "eval"))

    return run_alignment(cfg, ctx, "dpo", encode)
