"""DPO (and its variants) and KTO on PaddleNLP's trl: the whole run of stage=dpo and stage=kto.

What trl has is used as it is: DPOTrainer/KTOTrainer (through llmx's Trainer mixin, engine.fit),
DPOCriterion/KTOCriterion (the losses and the log-probabilities of responses). What it lacks is llmx's:
- the DPO losses trl defines otherwise than TRL / their papers (ORPO, DPOP), in llmx.align.losses;
- argument objects (`dpo_config`, `kto_config`): the pip package has no DPO/KTO config classes, only
  attribute reads; the loss names and reference rules come from llmx.align.options;
- trl's encoding, packing and collator as llmx.data.preference writes them (prompts rendered as the SFT
  run saw them, KTO included, and unpacked runs);
- held-out measurements comparable before and after training (the model's own log-prob preference,
  the implicit reward, and the token-level KL to the reference);
- fixes of trl's reference handling and KTO's reference point (over the batch one process would see),
  in llmx.compat.trl.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import paddle
from omegaconf import DictConfig

from llmx.align.losses import DPOCriterion
from llmx.align.options import LOSS_TYPES, effective_sft_ratio, reference_free
from llmx.compat.trl import DPOTrainer, KTOCriterion, KTOTrainer
from llmx.data.preference import PreferenceCollator, pack
from llmx.engine.logits import forward_logits, token_kl
from llmx.engine.peft import adapters_disabled, process_parameters
from llmx.engine.score import frozen

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "sft_loss")
KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")


def dpo_config(stage: DictConfig, lora: bool) -> SimpleNamespace:
    """trl's dpo_config (attributes DPOTrainer and DPOCriterion read) from a validated stage config."""
    loss = LOSS_TYPES[stage.loss_type]
    return SimpleNamespace(beta=stage.beta, loss_type=loss, label_smoothing=stage.label_smoothing,
                           simpo_gamma=stage.simpo_gamma, dpop_lambda=stage.dpop_lambda,
                           pref_loss_ratio=stage.pref_loss_ratio, sft_loss_ratio=effective_sft_ratio(stage),
                           reference_free=reference_free(stage), ref_model_update_steps=-1, lora=lora,
                           loss_definition=stage.loss_definition)


def kto_config(stage: DictConfig, lora: bool) -> SimpleNamespace:
    """trl's kto_config (attributes KTOTrainer and KTOCriterion read) from a validated stage config."""
    return SimpleNamespace(beta=stage.beta, desirable_weight=stage.desirable_weight,
                           undesirable_weight=stage.undesirable_weight, lora=lora)


def kl_groups(cfg: DictConfig) -> tuple:
    """The process groups whose ranks split one micro-batch between them, over which KTO's KL estimate
    is reduced (so it is the one of the micro-batch one process would see): the data replicas (dp,
    sharding) when each takes a slice of every micro-batch; none when each takes whole micro-batches
    of its own (llmx.layout), nor in one process."""
    from llmx.engine.distributed import hybrid_group
    from llmx.layout import train_batching

    if train_batching(cfg).micro_batch == cfg.stage.train.batch_size:
        return ()
    hcg, p = hybrid_group(), cfg.parallel
    return tuple(g for g, n in ((hcg.get_data_parallel_group(), p.dp), (hcg.get_sharding_parallel_group(), p.sharding))
                 if n > 1)


class PipelineLoss(paddle.nn.Layer):
    """llmx's criterion as a pipeline's last-stage loss, in trl's pipeline protocol: a reference pass
    (labels without reference log-probs) files its log-probs in trl's infohub, a policy pass its metrics.

    PaddleNLP's pipeline classes build their own loss from the model config (Llama's: PaddleNLP's
    DPOCriterion when `config.dpo_config` is set, else the language-model loss; none has a KTO loss), so
    the criterion llmx hands trl would never run on a pipeline; `into_pipeline` puts this one there."""

    def __init__(self, criterion) -> None:
        super().__init__()
        criterion.use_infohub = True
        self.criterion = criterion

    def forward(self, logits, labels):
        return self.criterion(logits, labels)

    @staticmethod
    def targets(labels) -> int:
        """The micro-batch's pairs (DPO) or responses (KTO), its rows of response_indexs: what one
        process weighs a micro-batch's loss by (engine.trainer's TokenWeightedLoss asks)."""
        rows = labels[2]
        return rows.shape[-2] if len(rows.shape) > 1 else 1


def into_pipeline(criterion, *models) -> None:
    """`criterion` as the last-stage loss of every pipeline model among `models` (the policy, the
    reference; None and one-process models are skipped)."""
    from llmx.engine.trainer import pipeline_layer

    for model in models:
        pipeline = pipeline_layer(model)
        if pipeline is not None:
            pipeline._loss_fn = [PipelineLoss(criterion)]


# --------------------------------------------------------------------------------- evaluation


def _logits(model, batch: dict):
    return forward_logits(model, input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                          attention_mask=batch["attention_mask"])


def score(model, packs: Sequence[dict], collator: PreferenceCollator, criterion, kind: str, reference=None,
          lora: bool = False, batch_size: int = 8) -> dict:
    """Per-response log-probabilities of the held-out set under `model` (and under the reference:
    `reference` a model, or `lora` for the adapters switched off; neither = the model itself), plus
    the mean per-token KL of the model to the reference over the response tokens."""
    policy = {"first": [], "second": [], "kl_sum": 0.0, "kl_tokens": 0}
    ref = {"first": [], "second": []}
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            for k in range(0, len(packs), batch_size):
                batch = collator(packs[k:k + batch_size])
                logits = _logits(model, batch)
                ref_logits = logits
                if reference is not None:
                    ref_logits = _logits(reference, batch)
                elif lora:
                    with adapters_disabled(model):
                        ref_logits = _logits(model, batch)
                for store, lg in ((policy, logits), (ref, ref_logits)):
                    first, second = _response_logps(criterion, kind, lg, batch)
                    store["first"].append(first)
                    store["second"].append(second)
                if kind == "dpo":
                    mask = (batch["chosen_labels"] != 0) | (batch["rejected_labels"] != 0)
                else:
                    mask = batch["response_labels"] != 0
                s, n = token_kl(logits, ref_logits, mask)
                policy["kl_sum"] += s
                policy["kl_tokens"] += n
    finally:
        if was_training:
            model.train()
    out = {f"{who}_{name}": np.concatenate(store[name]) for who, store in (("policy", policy), ("ref", ref))
           for name in ("first", "second")}
    out["kl"] = policy["kl_sum"] / max(policy["kl_tokens"], 1)
    return out


def _response_logps(criterion, kind: str, logits, batch) -> tuple[np.ndarray, np.ndarray]:
    """DPO: summed log-probs of (chosen, rejected) per pair; KTO: of (desirable, undesirable) responses."""
    if kind == "dpo":
        chosen, rejected, _ = criterion.dpo_logps(logits, batch["chosen_labels"], batch["rejected_labels"],
                                                  batch["response_indexs"], average_log_prob=False)
    else:
        chosen, rejected, _ = criterion.kto_logps(logits, batch["response_labels"], batch["response_kl_labels"],
                                                  batch["response_indexs"])
    return chosen.numpy().reshape(-1), rejected.numpy().reshape(-1)


def preference_metrics(scores: dict, beta: float, kind: str) -> dict:
    """DPO: the model's preference accuracy P[logp(chosen) > logp(rejected)] and mean log-prob margin
    (comparable before and after), the implicit-reward accuracy and margin, and the KL to the reference.
    KTO: the gap of mean log-prob between desirable and undesirable responses, and of implicit reward."""
    pf, ps, rf, rs = (scores[k] for k in ("policy_first", "policy_second", "ref_first", "ref_second"))
    out = {"kl_to_reference": float(scores["kl"])}
    if kind == "dpo":
        reward_margin = beta * ((pf - rf) - (ps - rs))
        out.update(preference_accuracy=float(np.mean(pf > ps)), logp_margin=float(np.mean(pf - ps)),
                   reward_accuracy=float(np.mean(reward_margin > 0)), reward_margin=float(np.mean(reward_margin)))
    else:
        mean = lambda a: float(np.mean(a)) if len(a) else float("nan")  # noqa: E731
        out.update(logp_gap=mean(pf) - mean(ps), reward_gap=mean(beta * (pf - rf)) - mean(beta * (ps - rs)))
    return out


# ---------------------------------------------------------------------------------- the stage run


def run_alignment(cfg: DictConfig, ctx, kind: str, encode: Callable) -> dict:
    """The whole DPO (`kind="dpo"`) or KTO (`kind="kto"`) run of a stage: build the policy (and the
    reference where the loss has one), encode (`encode(tokenizer)` -> the train and held-out sequences in
    trl's layout) and pack the data, measure the held-out set, train with trl's trainer through
    engine.fit, measure again, export. Returns the summary."""
    from llmx.engine import model as models
    from llmx.engine.checkpoint import adapter_base, export_model, export_result
    from llmx.engine.fit import fit
    from llmx.engine.peft import count_parameters, wrap_peft

    exp, stage, method = ctx.experiment, cfg.stage, cfg.stage.peft.method
    lora = method == "lora"
    params_before = process_parameters()
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)
    if kind == "dpo":
        config = dpo_config(stage, lora)
        needs_reference = not config.reference_free
    else:
        config = kto_config(stage, lora)
        needs_reference = True
    ref_model = None
    if needs_reference and not lora:  # a second copy of the starting weights, frozen
        ref_model = frozen(models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel))
    base_ref = adapter_base(cfg.model.name_or_path, model, tokenizer, ctx) if lora else None
    model = wrap_peft(model, cfg, base_ref)

    d = stage.data
    train, held_out = encode(tokenizer)
    train_set, packing = pack(train, tokenizer, d.max_length, stage.zero_padding)
    eval_set, _ = pack(held_out, tokenizer, d.max_length, stage.zero_padding)
    ctx.log.info("%s data: %d examples in %d sequences of <= %d tokens, non-pad fraction %.4f", kind,
                 packing["examples"], packing["sequences"], d.max_length, packing["non_pad_fraction"])
    collator = PreferenceCollator(d.max_length, pointwise=kind == "kto")

    if kind == "dpo":
        criterion = DPOCriterion(model.config, dpo_config=config)
        trainer_base, extra = DPOTrainer, {"dpo_config": config, "dpo_criterion": criterion}
        metric_keys = DPO_METRICS + (f"{config.loss_type}_loss",)
    else:
        criterion = KTOCriterion(model.config, kto_config=config, kl_groups=kl_groups(cfg))
        trainer_base, extra = KTOTrainer, {"kto_config": config, "kto_criterion": criterion}
        metric_keys = KTO_METRICS
    into_pipeline(criterion, model, ref_model)
    # Held-out measurements need the whole model in this process (no pipeline stages).
    measure = bool(eval_set) and stage.eval.enabled and cfg.parallel.pp == 1

    def measured(prefix: str) -> dict:
        scores = score(model, eval_set, collator, criterion, kind, reference=ref_model, lora=lora and needs_reference,
                       batch_size=stage.eval.batch_size)
        return {f"eval_{k}_{prefix}": v for k, v in preference_metrics(scores, config.beta, kind).items()}

    resumed = exp.latest_checkpoint() is not None
    before = exp.measured_before(lambda: measured("before"), resumed) if measure else {}

    trainer, summary = fit(cfg, ctx, model, train_set, eval_set, collator, tokenizer, evaluate=False,
                           trainer_base=trainer_base, ref_model=ref_model, metric_keys=metric_keys, **extra)
    summary = {"stage": f"{kind}" + ("" if method == "none" else f"-{method}"),
               "loss_type": stage.loss_type if kind == "dpo" else "kto", **summary}
    summary["reference"] = "none" if not needs_reference else ("adapters disabled" if lora else "model copy")
    summary["reference_params"] = count_parameters(ref_model) if ref_model is not None else 0
    summary["process_params"] = process_parameters() - params_before  # what this run holds
    summary["packing_efficiency"] = round(packing["non_pad_fraction"], 4)
    summary["packed_sequences"] = packing["sequences"]
    summary["train_examples"] = packing["examples"]
    if measure:
        after = measured("after")
        exp.log_metrics({"step": trainer.state.global_step, **after})
        summary.update(before)
        summary.update(after)

    summary.update(export_result(model, tokenizer, ctx, base_ref))
    if lora and stage.merge_adapter:
        model.merge()
        summary["model_dir"] = str(export_model(model.model, tokenizer, exp.dir / "model", ctx.layout,
                                                ctx.runtime.is_main))
    return summary
