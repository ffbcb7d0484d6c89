"""Pretraining runner: causal-LM training on indexed .bin/.idx data.

Random init by default, or `stage.continue_training=true` to start from
`model.name_or_path`. Evaluates the validation split before and after
(loss and perplexity) and exports the model like every full-weight stage.
Every layout trains on the same samples in the same order: the sample index holds
exactly the samples the steps consume (llmx.layout), whatever the layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig

from llmx.schema import TrainConfig, existing, positive, require, validate_train, validate_trainable
from llmx.data.mixture import check_weights
from llmx.layout import train_batching


@dataclass
class DataConfig:
    paths: List[str] = field(default_factory=lambda: ["${asset:demo/pretrain}"])  # .bin/.idx prefixes
    weights: Optional[List[float]] = None  # blending weights, one per path (None = equal)
    split: str = "949,50,1"  # train,valid,test shares of each dataset's documents
    seq_length: int = 128
    cache_dir: Optional[str] = None  # None = index-cache/ next to the first dataset


@dataclass
class EvalConfig:
    enabled: bool = True
    samples: int = 128  # validation samples for eval loss before and after training
    batch_size: int = 16


@dataclass
class Config:
    runner: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    continue_training: bool = False  # start from model.name_or_path's weights instead of random init


def validate(cfg: DictConfig) -> None:
    s = cfg.stage
    d = s.data
    validate_trainable(cfg)
    require(len(d.paths) >= 1, "stage.data.paths", list(d.paths), "needs at least one .bin/.idx prefix")
    for i, prefix in enumerate(d.paths):
        base = prefix[:-4] if prefix.endswith((".bin", ".idx")) else prefix
        for ext in (".bin", ".idx"):
            existing(f"stage.data.paths[{i}]", base + ext, "file")
    check_weights(None if d.weights is None else list(d.weights), len(d.paths))
    positive("stage.data.seq_length", d.seq_length, 2)
    validate_train(s.train)
    positive("stage.eval.samples", s.eval.samples)
    positive("stage.eval.batch_size", s.eval.batch_size)
    require(not s.continue_training or cfg.model.name_or_path is not None, "stage.continue_training", True,
            "needs model.name_or_path (the checkpoint directory to continue from)")


def prepare(cfg: DictConfig) -> dict:
    """Open the data and build (or reuse) the sample index, before paddle is imported."""
    from llmx.data.pretrain import load_pretrain_splits

    d, t = cfg.stage.data, cfg.stage.train
    train_samples = train_batching(cfg).samples(t.max_steps) if t.max_steps > 0 else _epoch_samples(cfg)
    wanted = {"train": train_samples, "valid": cfg.stage.eval.samples if cfg.stage.eval.enabled else 0}
    splits, cache = load_pretrain_splits(d.paths, d.weights, d.split, d.seq_length, cfg.seed, wanted, d.cache_dir)
    return {"splits": splits, "index_cache": cache}


def _epoch_samples(cfg: DictConfig) -> int:
    from llmx.data.indexed import IndexedDataset
    from llmx.data.pretrain import parse_split

    d = cfg.stage.data
    tokens = sum(IndexedDataset(p).num_tokens for p in d.paths) * parse_split(d.split)[0]
    return max(1, int(tokens * cfg.stage.train.epochs) // d.seq_length)


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.engine import model as models
    from llmx.engine.batching import PadCollator
    from llmx.engine.checkpoint import export_model
    from llmx.engine.fit import fit

    splits, cache = ctx.inputs["splits"], ctx.inputs["index_cache"]
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel, load_weights=cfg.stage.continue_training)
    trainer, summary = fit(cfg, ctx, model, splits["train"], splits.get("valid"), PadCollator(tokenizer.pad_token_id),
                           tokenizer, evaluate=cfg.stage.eval.enabled)
    summary = {"stage": "pretrain", **summary, "index_cache": "reused" if cache["reused"] else "built",
               "train_samples": len(splits["train"]), "seq_length": cfg.stage.data.seq_length}
    if "eval_loss" in summary:
        summary["eval_perplexity"] = math.exp(min(summary["eval_loss"], 50.0))
    summary["model_dir"] = str(export_model(model, tokenizer, ctx.experiment.dir / "model", ctx.layout,
                                            ctx.runtime.is_main))
    return summary
