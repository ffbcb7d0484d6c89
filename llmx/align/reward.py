"""Reward-model training (stage=rm): a score model (llmx.engine.score) trained with the pairwise loss
-log sigmoid(r(chosen) - r(rejected)) through PaddleNLP's Trainer (engine.fit), the held-out pairwise
accuracy and mean margin measured before and after, the result exported as a score model (`model/` or
`adapter/` plus `score_head.safetensors`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from omegaconf import DictConfig
from paddlenlp.trainer import Trainer

from llmx.data.preference import PairCollator, encode_pairs
from llmx.engine.score import ScoreModel, save_head


def pair_margins(model: ScoreModel, batch: dict):
    scores = model.score(batch["input_ids"], batch["attention_mask"])
    n = scores.shape[0] // 2
    return scores[:n] - scores[n:]


def pairwise_metrics(model: ScoreModel, pairs, collator: PairCollator, batch_size: int) -> dict:
    """Held-out pairwise accuracy (chosen scored higher) and mean margin."""
    was_training = model.training
    model.eval()
    margins = []
    with paddle.no_grad():
        for i in range(0, len(pairs), batch_size):
            margins.append(pair_margins(model, collator(pairs[i:i + batch_size])).numpy())
    model.train(was_training)
    m = np.concatenate(margins)
    return {"eval_accuracy": round(float((m > 0).mean()), 6), "eval_margin": round(float(m.mean()), 6)}


class RewardTrainer(Trainer):
    """The pairwise loss -log sigmoid(r_chosen - r_rejected), with each logged step's pair accuracy and margin."""

    def compute_loss(self, model, inputs, return_outputs=False):
        margins = pair_margins(model, inputs)
        loss = -paddle.nn.functional.log_sigmoid(margins).mean()
        stats = getattr(self, "_pair_stats", [])
        stats.append((float((margins > 0).astype("float32").mean()), float(margins.mean())))
        self._pair_stats = stats
        return (loss, margins) if return_outputs else loss

    def log(self, logs, **kwargs):
        stats = getattr(self, "_pair_stats", [])
        if "loss" in logs and stats:
            logs["accuracy"] = round(float(np.mean([a for a, _ in stats])), 6)
            logs["margin"] = round(float(np.mean([m for _, m in stats])), 6)
            self._pair_stats = []
        return super().log(logs, **kwargs)


def run_reward_model(cfg: DictConfig, ctx) -> dict:
    """The whole stage=rm run: build the score model (over the policy's LM, LoRA-wrapped or not), encode the
    pairs, measure the held-out set, train, measure again, export the model (or adapter) and the head.
    Returns the summary."""
    from llmx.engine import model as models
    from llmx.engine.checkpoint import adapter_base, export_result
    from llmx.engine.distributed import barrier
    from llmx.engine.fit import fit
    from llmx.engine.trainer import training_arguments
    from llmx.engine.peft import wrap_peft

    exp, s = ctx.experiment, cfg.stage
    tokenizer = models.build_tokenizer(cfg.model)
    lm = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)
    lora = s.peft.method == "lora"
    base_ref = adapter_base(cfg.model.name_or_path, lm, tokenizer, ctx) if lora else None

    paddle.seed(cfg.seed)  # the head's init
    model = ScoreModel(wrap_peft(lm, cfg, base_ref))
    d = s.data
    train = encode_pairs(ctx.inputs["train"], tokenizer, d.max_length, d.max_prompt_length)
    held_out = encode_pairs(ctx.inputs["eval"], tokenizer, d.max_length, d.max_prompt_length)
    collator = PairCollator(tokenizer.pad_token_id)
    measure = bool(held_out) and s.eval.enabled

    def measured(prefix: str) -> dict:
        return {f"{k}_{prefix}": v for k, v in pairwise_metrics(model, held_out, collator, s.eval.batch_size).items()}

    resumed = exp.latest_checkpoint() is not None
    before = exp.measured_before(lambda: measured("before"), resumed) if measure else {}
    # the classic checkpoint format: PaddleNLP's unified checkpoint saves PretrainedModels only
    args = training_arguments(cfg, exp, ctx.runtime.device, unified_checkpoint=False)
    trainer, summary = fit(cfg, ctx, model, train, None, collator, tokenizer, evaluate=False,
                           trainer_base=RewardTrainer, args=args, metric_keys=("accuracy", "margin"))
    summary = {"stage": "rm" + ("-lora" if lora else ""), **summary, **before}
    if measure:
        after = measured("after")
        exp.log_metrics({"step": trainer.state.global_step, **after})
        summary.update(after)
    exported = export_result(model.lm, tokenizer, ctx, base_ref)
    summary.update(exported)
    if ctx.runtime.is_main:
        save_head(model, Path(exported.get("adapter_dir") or exported["model_dir"]))
    barrier()
    return summary
