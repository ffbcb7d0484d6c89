"""Pretraining runner: causal-LM training on indexed .bin/.idx data.

Random init by default, or `stage.continue_training=true` to start from
`model.name_or_path`. Evaluates the validation split before and after
(loss and perplexity) and exports the model like every full-weight stage.
"""
from __future__ import annotations

import math

from omegaconf import DictConfig

from llmx.stages import register


def prepare(cfg: DictConfig) -> dict:
    """Open the data and build (or reuse) the sample index, before paddle is imported."""
    from llmx.data.pretrain import load_pretrain_splits

    d, t, p = cfg.stage.data, cfg.stage.train, cfg.parallel
    replicas = p.dp * p.sharding  # data-parallel replicas consume the global batch together
    train_samples = t.max_steps * t.batch_size * t.grad_accum * replicas if t.max_steps > 0 else _epoch_samples(cfg)
    wanted = {"train": train_samples, "valid": cfg.stage.eval.samples if cfg.stage.eval.enabled else 0}
    splits, cache = load_pretrain_splits(d.paths, d.weights, d.split, d.seq_length, cfg.seed, wanted, d.cache_dir)
    return {"splits": splits, "index_cache": cache}


def _epoch_samples(cfg: DictConfig) -> int:
    from llmx.data.indexed import IndexedDataset
    from llmx.data.pretrain import parse_split

    d = cfg.stage.data
    tokens = sum(IndexedDataset(p).num_tokens for p in d.paths) * parse_split(d.split)[0]
    return max(1, int(tokens * cfg.stage.train.epochs) // d.seq_length)


@register("pretrain")
def run(cfg: DictConfig, ctx) -> dict:
    from llmx.engine import model as models
    from llmx.engine.batching import PadCollator
    from llmx.engine.fit import fit

    splits, cache = ctx.inputs["splits"], ctx.inputs["index_cache"]
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel, load_weights=cfg.stage.continue_training)
    trainer, summary = fit(cfg, ctx, model, tokenizer, splits["train"], splits.get("valid"),
                           PadCollator(tokenizer.pad_token_id), evaluate=cfg.stage.eval.enabled)
    summary = {"stage": "pretrain", **summary, "index_cache": "reused" if cache["reused"] else "built",
               "train_samples": len(splits["train"]), "seq_length": cfg.stage.data.seq_length}
    if "eval_loss" in summary:
        summary["eval_perplexity"] = math.exp(min(summary["eval_loss"], 50.0))
    summary["model_dir"] = models.export_full_model(cfg.parallel, trainer, model, tokenizer,
                                                    ctx.experiment.dir / "model", ctx.runtime.is_main)
    return summary
