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
    through the same hook: it stays as it is too. Under pipeline parallelism trl's wrapper is kept: a
    pipeline's forward is the PipelineParallel wrapper's eval_batch.
    Can go when trl's _wrap_ref_model works in one process without fleet (or trl stops wrapping a
    forward-only model)."""

    def _wrap_ref_model(self, model):
        if self.args.pipeline_parallel_degree > 1:  # a pipeline's forward is its wrapper's eval_batch
            return super()._wrap_ref_model(model)
        return model


class KTOCriterion(trl.KTOCriterion):
    """KTO's reference point over the batch one process would see, clipped at 0 in every layout.

    Upstream (paddlenlp 3.0.0b4, KTOCriterion.kto_loss): KTO's reference point is z0 = max(0, KL)
    (Ethayarajh et al. 2024), estimated from the micro-batch's mismatched pairs. trl (1) clips the
    estimate only when world_size > 1, so one process trains another loss than a data-parallel run
    whenever it is negative; (2) with several processes, averages the processes' own means (gathered
    over the last ranks of the pipeline groups): not the mean of a micro-batch the data replicas split
    when they hold different numbers of examples (llmx's packed sequences do), and a mixture of
    different micro-batches when each replica takes whole micro-batches of its own. Here the sum and
    count of the KL terms are all-reduced over `kl_groups` (the groups of replicas that split one
    micro-batch; none in one process, or when each replica takes whole micro-batches), their mean is
    clipped at 0, and trl's loss gets that estimate as one term, with its own gather turned off.
    Can go when trl's kto_loss clips in one process and reduces the KL's sum and count over the
    replicas that share a micro-batch."""

    def __init__(self, config, kto_config=None, kl_groups=(), **kwargs):
        super().__init__(config, kto_config=kto_config, **kwargs)
        self.kl_groups = tuple(kl_groups)

    def kto_loss(self, policy_chosen_logps, policy_rejected_logps, policy_kl_logps, reference_chosen_logps,
                 reference_rejected_logps, reference_kl_logps):
        terms = (policy_kl_logps - reference_kl_logps).detach().astype("float64")
        sum_count = paddle.stack([terms.sum(), paddle.full([], terms.shape[0], dtype="float64")])
        for group in self.kl_groups:
            paddle.distributed.all_reduce(sum_count, group=group)
        z0 = (sum_count[0] / sum_count[1]).clip(min=0).astype(policy_kl_logps.dtype).reshape([1])
        return super().kto_loss(policy_chosen_logps, policy_rejected_logps, z0, reference_chosen_logps,
                                reference_rejected_logps, paddle.zeros_like(z0))

    def _nested_gather(self, tensors):
        return tensors  # kto_loss hands trl the finished estimate: nothing left to gather


class DPOTrainer(_ReferenceAsIs, trl.DPOTrainer):
    """trl's DPOTrainer with its reference model as it is (_ReferenceAsIs)."""


class KTOTrainer(_ReferenceAsIs, trl.KTOTrainer):
    """trl's KTOTrainer with its reference model as it is (_ReferenceAsIs)."""
