"""Preference alignment (DPO and its variants, KTO) on PaddleNLP's trl, shared by the dpo and kto stages.

What trl has is used as it is: DPOTrainer/KTOTrainer (through llmx's Trainer mixin, engine.fit),
DPOCriterion/KTOCriterion (the losses and the log-probabilities of responses),
ZeroPaddingMapDataset (packing) and `preference_collate_fn`. What it lacks,
written here:
- argument objects: the pip package has no DPO/KTO config classes, only attribute reads;
- the reference model is used unwrapped: trl wraps it with `fleet.distributed_model`, which
  fails unless fleet is initialised (one process never initialises it) and is not needed for a
  forward-only model under data parallelism (see DPOTrainer / KTOTrainer below);
- the encoding: trl's layout, written by llmx.data.preference.encode_trl from llmx's own chat rendering
  (trl's renders templates that are not turn-local wrongly), KTO included (trl's pip package has none);
- an unpacked run (zero_padding=false) is one example per pack: trl's collator only takes packs;
- held-out evaluation that is comparable before and after training (the model's own log-prob
  preference, the implicit reward, and the token-level KL to the reference).
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import paddle
from omegaconf import DictConfig
from paddlenlp import trl

from llmx.engine.batching import GLOBAL_TARGETS, LOCAL_TARGETS, NUM_TOKENS
from llmx.engine.logits import forward_logits, token_kl
from llmx.engine.peft import adapters_disabled, process_parameters

log = logging.getLogger(__name__)

# The names users type -> trl's; `orpo` is trl's "or".
LOSS_TYPES = {"sigmoid": "sigmoid", "ipo": "ipo", "hinge": "hinge", "kto_pair": "kto_pair", "sppo_hard": "sppo_hard",
              "nca_pair": "nca_pair", "dpop": "dpop", "orpo": "or", "simpo": "simpo"}
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "sft_loss")
KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")


def dpo_config(stage: DictConfig, lora: bool) -> SimpleNamespace:
    """trl's dpo_config (attributes DPOTrainer and DPOCriterion read) from a validated stage config."""
    loss = LOSS_TYPES[stage.loss_type]
    return SimpleNamespace(beta=stage.beta, loss_type=loss, label_smoothing=stage.label_smoothing,
                           simpo_gamma=stage.simpo_gamma, dpop_lambda=stage.dpop_lambda,
                           pref_loss_ratio=stage.pref_loss_ratio, sft_loss_ratio=effective_sft_ratio(stage),
                           reference_free=reference_free(stage), ref_model_update_steps=-1, lora=lora)


def reference_free(stage: DictConfig) -> bool:
    """SimPO and ORPO have no reference model; the rest have one unless the user turns it off."""
    if stage.reference_free is not None:
        return bool(stage.reference_free)
    return stage.loss_type in ("simpo", "orpo")


def effective_sft_ratio(stage: DictConfig) -> float:
    """ORPO is its odds-ratio term plus the chosen response's NLL (weight 1 unless set)."""
    if stage.sft_loss_ratio is not None:
        return float(stage.sft_loss_ratio)
    return 1.0 if stage.loss_type == "orpo" else 0.0


def kto_config(stage: DictConfig, lora: bool) -> SimpleNamespace:
    return SimpleNamespace(beta=stage.beta, desirable_weight=stage.desirable_weight,
                           undesirable_weight=stage.undesirable_weight, lora=lora)


class _ReferenceAsIs:
    """trl wraps the reference model with paddle.amp.decorate + fleet.distributed_model. Without fleet
    initialised (one process) that fails ('Fleet' object has no attribute '_user_defined_strategy'),
    and a model that only runs forward under no_grad needs no data-parallel wrapper, nor (float32)
    AMP decoration. evaluate() passes the policy through the same hook: it stays as it is too."""

    def _wrap_ref_model(self, model):
        return model


class KTOCriterion(trl.KTOCriterion):
    """Upstream fix (paddlenlp 3.0.0b4, KTOCriterion.kto_loss): KTO's reference point is
    z0 = max(0, KL) (Ethayarajh et al. 2024), but trl clips the KL estimate only when
    world_size > 1, so one process trains another loss than a data-parallel run whenever the
    estimate is negative. Clipped here in one process as well (a non-positive estimate is
    passed as exactly 0 by handing the reference's KL log-probs in for the policy's)."""

    def kto_loss(self, policy_chosen_logps, policy_rejected_logps, policy_kl_logps, reference_chosen_logps,
                 reference_rejected_logps, reference_kl_logps):
        if paddle.distributed.get_world_size() <= 1 and float((policy_kl_logps - reference_kl_logps).mean()) < 0:
            policy_kl_logps = reference_kl_logps
        return super().kto_loss(policy_chosen_logps, policy_rejected_logps, policy_kl_logps, reference_chosen_logps,
                                reference_rejected_logps, reference_kl_logps)


class DPOTrainer(_ReferenceAsIs, trl.DPOTrainer):
    pass


class KTOTrainer(_ReferenceAsIs, trl.KTOTrainer):
    pass


# ------------------------------------------------------------------------------------------- data


class Packs(list):
    """Packed sequences; their loss units are the examples (pairs) they hold: the trainer weighs each
    micro-batch's mean loss by them, so every layout computes one process's mean over the step's pairs."""

    def target_token_counts(self) -> np.ndarray:
        return np.array([len(p["response_indexs"]) for p in self], dtype=np.int64)


def pack(encoded: Sequence[dict], tokenizer, max_length: int, zero_padding: bool) -> tuple[list[dict], dict]:
    """Sequences of at most max_length tokens: several examples each (trl's ZeroPaddingMapDataset), or
    one each. Returns the packs and their statistics (non-pad fraction of max_length-token rows)."""
    from paddlenlp.datasets import ZeroPaddingMapDataset

    if zero_padding:
        packs = Packs(ZeroPaddingMapDataset(list(encoded), tokenizer, max_length))
    else:
        packs = Packs(ZeroPaddingMapDataset._pad_batch_records([ex]) for ex in encoded)
    tokens = sum(len(p["input_ids"]) for p in packs)
    stats = {"examples": len(encoded), "sequences": len(packs),
             "non_pad_fraction": tokens / max(len(packs) * max_length, 1)}
    return packs, stats


class PreferenceCollator:
    """trl's preference_collate_fn (rows padded to max_length) as paddle tensors, plus the batch's real
    token count for llmx's tokens/s and its pairs (examples), by which the trainer weighs its loss."""

    carries_global_targets = True  # engine.trainer may tag features with the step's pairs (GLOBAL_TARGETS)

    def __init__(self, max_length: int, pointwise: bool = False) -> None:
        self.max_length = max_length
        self.data_type = "pointwise" if pointwise else "pairwise"

    def __call__(self, features: Sequence[dict]) -> dict:
        batch = trl.preference_collate_fn(list(features), max_seq_len=self.max_length, data_type=self.data_type)
        extra = {NUM_TOKENS: sum(len(f["input_ids"]) for f in features),
                 LOCAL_TARGETS: sum(len(f["response_indexs"]) for f in features)}
        if GLOBAL_TARGETS in features[0]:
            extra[GLOBAL_TARGETS] = int(features[0][GLOBAL_TARGETS])
        return {**{k: paddle.to_tensor(v) for k, v in batch.items()}, **extra}


# ------------------------------------------------------------------------------------- reference


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
        ref_model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)
        ref_model.eval()
        for p in ref_model.parameters():
            p.stop_gradient = True
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
        criterion = trl.DPOCriterion(model.config, dpo_config=config)
        trainer_base, extra = DPOTrainer, {"dpo_config": config, "dpo_criterion": criterion}
        metric_keys = DPO_METRICS + (f"{config.loss_type}_loss",)
    else:
        criterion = KTOCriterion(model.config, kto_config=config)
        trainer_base, extra = KTOTrainer, {"kto_config": config, "kto_criterion": criterion}
        metric_keys = KTO_METRICS
    # Held-out measurements need the whole model in this process (no pipeline stages).
    measure = bool(eval_set) and stage.eval.enabled and cfg.parallel.pp == 1

    def measured(prefix: str) -> dict:
        scores = score(model, eval_set, collator, criterion, kind, reference=ref_model, lora=lora and needs_reference,
                       batch_size=stage.eval.batch_size)
        return {f"eval_{k}_{prefix}": v for k, v in preference_metrics(scores, config.beta, kind).items()}

    before = {}
    if measure:
        if exp.latest_checkpoint() is None:
            before = measured("before")
            exp.log_metrics({"step": 0, **before})
        else:  # a resumed run measured its start already
            before = next((r for r in exp.read_metrics() if r.get("step") == 0 and any(k.endswith("_before") for k in r)), {})
            before = {k: v for k, v in before.items() if k.endswith("_before")}

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
