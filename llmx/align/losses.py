"""The DPO loss types as llmx defines them: as Hugging Face TRL does (the paper where TRL has none), on
PaddleNLP's DPOCriterion, whose log-probabilities, trainer hooks and every loss defined alike are used as
they are.

PaddleNLP 3.0.0b4 defines two losses otherwise; `stage.loss_definition=paddlenlp` keeps its definitions:
- ORPO (`or`): Hong et al. 2024 (eq. 6) and TRL's ORPOTrainer weight the odds-ratio term by lambda,
  TRL's `beta`: L = NLL(chosen) - beta * mean(log sigmoid(log odds ratio)). PaddleNLP leaves the
  term unweighted (only `pref_loss_ratio`), so `stage.beta` has no effect on it.
- DPOP: TRL has none. Pal et al. 2024 ("Smaug", eq. 3) put the penalty inside the sigmoid, scaled by
  beta: L = -log sigmoid(beta * (margin - lambda * max(0, ref_logp_c - pi_logp_c))). PaddleNLP adds
  lambda * max(0, ref_logp_c - pi_logp_c) outside the log-sigmoid.
`pref_loss_ratio` weights the preference term of every loss, these two included (1 by default, where
the definitions above hold as written).

Which definition to follow is llmx's choice between two published ones, not a workaround of an upstream
bug: it lives here, not in llmx.compat.trl.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddlenlp import trl


class DPOCriterion(trl.DPOCriterion):
    """trl's DPOCriterion with ORPO and DPOP as TRL / the paper define them, unless the config's
    `loss_definition` is "paddlenlp"."""

    def dpo_loss(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
        c = self.dpo_config
        logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
        if c.loss_definition == "paddlenlp" or c.loss_type not in ("or", "dpop"):
            return super().dpo_loss(*logps)
        if c.loss_type == "or":  # PaddleNLP's odds-ratio term is ORPO's; the paper weights it by lambda = beta
            return c.beta * super().dpo_loss(*logps)
        margin = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
        chosen_fell = paddle.clip(reference_chosen_logps - policy_chosen_logps, min=0)
        return -F.log_sigmoid(c.beta * (margin - c.dpop_lambda * chosen_fell)).mean() * c.pref_loss_ratio
