"""Workarounds for PaddleNLP's trl (found in paddlenlp 3.0.0b4), used by llmx.align's DPO and KTO runs.

Each says the upstream problem, where it was found and when it can go; tests/quick/test_compat_trl.py
fails as soon as the upstream behaviour a workaround relies on changes.
"""
from __future__ import annotations

import paddle
from paddlenlp import trl


class _ReferenceAsIs:
    """The reference model is used as it is.

    Upstream (paddlenlp 3.0.0b4, DPOTrainer/KTOTrainer._wrap_ref_model): trl wraps the reference model
    with paddle.amp.decorate + fleet.distributed_model. Without fleet initialised (one process) that fails
    ('Fleet' object has no attribute '_user_defined_strategy'), and a model that only runs forward under
    no_grad needs no data-parallel wrapper, nor (float32) AMP decoration. evaluate() passes the policy
    through the same hook: it stays as it is too.
    Can go when trl's _wrap_ref_model works in one process without fleet (or trl stops wrapping a
    forward-only model)."""

    def _wrap_ref_model(self, model):
        return model


class KTOCriterion(trl.KTOCriterion):
    """KTO's reference point clipped in one process too.

    Upstream (paddlenlp 3.0.0b4, KTOCriterion.kto_loss): KTO's reference point is z0 = max(0, KL)
    (Ethayarajh et al. 2024), but trl clips the KL estimate only when world_size > 1, so one process
    trains another loss than a data-parallel run whenever the estimate is negative. Clipped here in one
    process as well (a non-positive estimate is passed as exactly 0 by handing the reference's KL
    log-probs in for the policy's).
    Can go when trl's kto_loss clips the estimate in one process."""

    def kto_loss(self, policy_chosen_logps, policy_rejected_logps, policy_kl_logps, reference_chosen_logps,
                 reference_rejected_logps, reference_kl_logps):
        if paddle.distributed.get_world_size() <= 1 and float((policy_kl_logps - reference_kl_logps).mean()) < 0:
            policy_kl_logps = reference_kl_logps
        return super().kto_loss(policy_chosen_logps, policy_rejected_logps, policy_kl_logps, reference_chosen_logps,
                                reference_rejected_logps, reference_kl_logps)


class DPOTrainer(_ReferenceAsIs, trl.DPOTrainer):
    """trl's DPOTrainer with its reference model as it is (_ReferenceAsIs)."""


class KTOTrainer(_ReferenceAsIs, trl.KTOTrainer):
    """trl's KTOTrainer with its reference model as it is (_ReferenceAsIs)."""
