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
from llmx.engine.score import ScoreModel, at_last_token, save_head, score_head


def margins_of(scores):
    """r(chosen) - r(rejected) of a batch's scores (the chosen rows first, then the rejected ones)."""
    n = scores.shape[0] // 2
    return scores[:n] - scores[n:]


def pairwise_loss(margins):
    return -paddle.nn.functional.log_sigmoid(margins).mean()


def pair_margins(model: ScoreModel, batch: dict):
    return margins_of(model.score(batch["input_ids"], batch["attention_mask"]))


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
        loss = pairwise_loss(margins)
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


# ------------------------------------------------------------------------- pipeline parallelism


class _HeadPipe(paddle.nn.Layer):
    """The score head as the last pipeline stage's last layer (in place of the LM head): final hidden
    states -> per-position values, as ScoreModel.forward."""

    def __init__(self, head) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden):
        return self.head(hidden.astype("float32")).squeeze(-1)


class _PairwisePipeLoss(paddle.nn.Layer):
    """RewardTrainer's loss on the last stage: its labels are the attention masks (the last real token)."""

    def forward(self, values, attention_mask):
        return pairwise_loss(margins_of(at_last_token(values, attention_mask)))


def score_pipeline(lm, head):
    """`lm`'s pipeline parts as a score model: on the last stage the LM head gives way to `head` and the
    loss is the pairwise one; every stage's micro-batches carry their attention mask to the last stage
    (as its labels). Returns the PipelineLayer (the head registered on the last stage, to train it)."""
    from llmx.engine.trainer import pipeline_layer

    pipeline = pipeline_layer(lm)
    if pipeline._stage_id == pipeline._num_stages - 1:
        last = pipeline.run_function[-1]
        if "Head" not in type(getattr(last, "func", last)).__name__ and "Head" not in type(last).__name__:
            raise RuntimeError(f"{type(pipeline).__name__}: its last layer is not an LM head ({last!r})")
        pipeline.run_function[-1] = _HeadPipe(head)
        pipeline.add_sublayer("score_head", pipeline.run_function[-1])
        if pipeline._single_to_pp_mapping is None:
            pipeline._set_pipeline_name_mapping()
        for name in ("weight", "bias"):  # checkpoints name it as one process's ScoreModel does
            pipeline._single_to_pp_mapping[f"score_head.{name}"] = f"score_head.head.{name}"
            pipeline._pp_to_single_mapping[f"score_head.head.{name}"] = f"score_head.{name}"
    pipeline._loss_fn = [_PairwisePipeLoss()]
    prepare = pipeline._prepare_pipeline_inputs_func

    def with_masks_as_labels(inputs):
        for batch in [inputs] if isinstance(inputs, dict) else inputs:
            batch["labels"] = batch["attention_mask"]
        return prepare(inputs)

    pipeline._prepare_pipeline_inputs_func = with_masks_as_labels
    return pipeline


def _last_stage_writer() -> bool:
    """Whether this rank writes what the last pipeline stage alone holds (its first tensor and data rank)."""
    from llmx.engine.distributed import hybrid_group

    hcg = hybrid_group()
    return hcg.get_stage_id() == hcg.get_pipe_parallel_world_size() - 1 and hcg.get_model_parallel_rank() == 0 \
        and hcg.get_data_parallel_rank() == 0 and hcg.get_sharding_parallel_rank() == 0


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
    pipelined = cfg.parallel.pp > 1
    if pipelined:  # the head on the last stage, drawn as one process draws it
        model = score_pipeline(lm, score_head(lm.config.hidden_size))
    else:
        model = ScoreModel(wrap_peft(lm, cfg, base_ref))
    d = s.data
    train = encode_pairs(ctx.inputs["train"], tokenizer, d.max_length, d.max_prompt_length)
    held_out = encode_pairs(ctx.inputs["eval"], tokenizer, d.max_length, d.max_prompt_length)
    collator = PairCollator(tokenizer.pad_token_id)
    measure = bool(held_out) and s.eval.enabled and not pipelined  # (measured with the whole model in one process)

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
    head = model._sub_layers.pop("score_head", None) if pipelined else model  # the LM's weights alone are exported
    exported = export_result(lm if pipelined else model.lm, tokenizer, ctx, base_ref)
    summary.update(exported)
    barrier()  # (the exported directory is complete before the head marks it)
    if _last_stage_writer() if pipelined else ctx.runtime.is_main:
        save_head(head, Path(exported.get("adapter_dir") or exported["model_dir"]))
    barrier()
    return summary
