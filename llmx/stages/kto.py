"""KTO runner: alignment on pointwise feedback with PaddleNLP trl's KTOTrainer, full or LoRA.

Trains on pointwise feedback in any format of llmx.data.formats (PaddleNLP's {"src", "tgt", "response": [a], "sort":
[1|0]}, TRL's {"prompt", "completion", "label"}, ...), weighting
desirable and undesirable examples by `desirable_weight` / `undesirable_weight`. KTO's KL
baseline is estimated from mismatched pairs: example i's prompt with example i+1's response
(in file order). The held-out split is measured before and after (the log-prob and implicit
reward gap between desirable and undesirable responses, the KL to the reference). The algorithm
is llmx.align.preference (shared with the dpo runner), the encoding and batching llmx.data.preference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from llmx.schema import DataFiles, PeftConfig, TrainConfig, require, validate_preference
from llmx.data.formats import read_splits


@dataclass
class DataConfig(DataFiles):
    train: Any = "${asset:demo/kto_train.jsonl}"
    eval: Optional[str] = "${asset:demo/kto_eval.jsonl}"
    max_length: int = 128  # tokens per sequence: prompt + response + KL response (several with zero padding)
    max_prompt_length: int = 64  # an over-long example keeps this many prompt tokens (from the right)


@dataclass
class EvalConfig:
    enabled: bool = True  # held-out reward gap and KL before and after
    batch_size: int = 8  # sequences per forward when measuring


@dataclass
class Config:
    runner: str = "kto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    beta: float = 0.1
    desirable_weight: float = 1.0  # weight of desirable examples' losses
    undesirable_weight: float = 1.0  # weight of undesirable examples' losses
    merge_adapter: bool = False  # LoRA only: also write the merged full model
    zero_padding: bool = True  # pack several examples per sequence (trl's layout); false: one per row


def validate(cfg: DictConfig) -> None:
    s = cfg.stage
    validate_preference(cfg)
    for key in ("desirable_weight", "undesirable_weight"):
        require(s[key] > 0, f"stage.{key}", s[key], "must be > 0")


def prepare(cfg: DictConfig) -> dict:
    """Read and check the data files before any heavy import (paddle-free)."""
    d = cfg.stage.data
    return read_splits(d, "kto", cfg.seed)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.align.preference import run_alignment
    from llmx.data.preference import encode_trl

    d = cfg.stage.data

    def encode(tokenizer):  # each response is paired with the next example's, whose log-prob estimates the KL term
        return tuple(encode_trl(ctx.inputs[split], tokenizer, d.max_length, d.max_prompt_length, pointwise=True)
                     if ctx.inputs[split] else [] for split in ("train", "eval"))

    return run_alignment(cfg, ctx, "kto", encode)
