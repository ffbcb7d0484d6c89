"""Reward model runner: a causal LM's backbone with a scalar head (llmx.engine.reward), trained with the
pairwise loss -log sigmoid(r(chosen) - r(rejected)) on preference data (any format of llmx.data.formats),
full or LoRA, through PaddleNLP's Trainer (engine.fit). The held-out pairwise accuracy and mean margin are
measured before and after. The run exports a score model: `model/` (or `adapter/` over its base) with
`score_head.safetensors`, which `stage=ppo stage.reward_model=<this run>`, `stage=grpo stage.reward=model`
and `stage=infer stage.task=score` load.
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
    from pathlib import Path

    from llmx.engine import model as models
    from llmx.engine.checkpoint import adapter_base, export_result
    from llmx.engine.distributed import barrier
    from llmx.engine.fit import fit
    from llmx.data.preference import encode_pairs
    from llmx.engine.reward import PairCollator, RewardTrainer, ScoreModel, pairwise_metrics, save_head
    from llmx.engine.trainer import training_arguments
    from llmx.engine.peft import wrap_peft

    exp, s = ctx.experiment, cfg.stage
    tokenizer = models.build_tokenizer(cfg.model)
    lm = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)
    lora = s.peft.method == "lora"
    base_ref = adapter_base(cfg.model.name_or_path, lm, tokenizer, ctx) if lora else None
    import paddle

    paddle.seed(cfg.seed)  # the head's init
    model = ScoreModel(wrap_peft(lm, cfg, base_ref))
    d = s.data
    train = encode_pairs(ctx.inputs["train"], tokenizer, d.max_length, d.max_prompt_length)
    held_out = encode_pairs(ctx.inputs["eval"], tokenizer, d.max_length, d.max_prompt_length)
    collator = PairCollator(tokenizer.pad_token_id)
    measure = bool(held_out) and s.eval.enabled

    before = {}
    if measure:
        if exp.latest_checkpoint() is None:
            before = {f"{k}_before": v for k, v in pairwise_metrics(model, held_out, collator, s.eval.batch_size).items()}
            exp.log_metrics({"step": 0, **before})
        else:  # measured when the run started
            first = next((r for r in exp.read_metrics() if r.get("step") == 0), {})
            before = {k: v for k, v in first.items() if k.endswith("_before")}
    # the classic checkpoint format: PaddleNLP's unified checkpoint saves PretrainedModels only
    args = training_arguments(cfg, exp, ctx.runtime.device, unified_checkpoint=False)
    trainer, summary = fit(cfg, ctx, model, train, None, collator, tokenizer, evaluate=False,
                           trainer_base=RewardTrainer, args=args, metric_keys=("accuracy", "margin"))
    summary = {"stage": "rm" + ("-lora" if lora else ""), **summary, **before}
    if measure:
        after = {f"{k}_after": v for k, v in pairwise_metrics(model, held_out, collator, s.eval.batch_size).items()}
        exp.log_metrics({"step": trainer.state.global_step, **after})
        summary.update(after)
    exported = export_result(model.lm, tokenizer, ctx, base_ref)
    summary.update(exported)
    if ctx.runtime.is_main:
        save_head(model, Path(exported.get("adapter_dir") or exported["model_dir"]))
    barrier()
    return summary
