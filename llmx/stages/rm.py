"""Reward model runner: a causal LM's backbone with a scalar head (llmx.engine.score), trained with the
pairwise loss -log sigmoid(r(chosen) - r(rejected)) on preference data (any format of llmx.data.formats),
full or LoRA, through PaddleNLP's Trainer (engine.fit). The held-out pairwise accuracy and mean margin are
measured before and after. The run exports a score model: `model/` (or `adapter/` over its base) with
`score_head.safetensors`, which `stage=ppo stage.reward_model=<this run>`, `stage=grpo stage.reward=model`
and `stage=infer stage.task=score` load. The training is llmx.align.reward's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from llmx.schema import DataFiles, PeftConfig, TrainConfig, require, validate_pairs
from llmx.data.formats import read_splits


@dataclass
class DataConfig(DataFiles):
    train: Any = "${asset:demo/dpo_train.jsonl}"
    eval: Optional[str] = "${asset:demo/dpo_eval.jsonl}"
    max_length: int = 128  # tokens of prompt + response
    max_prompt_length: int = 96  # an over-long prompt keeps this many tokens (from the right)


@dataclass
class EvalConfig:
    enabled: bool = True  # held-out pairwise accuracy and margin before and after
    batch_size: int = 16  # pairs per forward when measuring


@dataclass
class Config:
    runner: str = "rm"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def validate(cfg: DictConfig) -> None:
    validate_pairs(cfg)
    require(cfg.parallel.tp == 1, "parallel.tp", cfg.parallel.tp, "stage=rm runs under dp and sharding "
            "(its score head is not split for tensor parallelism)")


def prepare(cfg: DictConfig) -> dict:
    d = cfg.stage.data
    return read_splits(d, "dpo", cfg.seed)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.align.reward import run_reward_model

    return run_reward_model(cfg, ctx)
