"""Every DPO loss type through llmx's criterion (llmx.align.losses on PaddleNLP's DPOCriterion, built from
the stage config as the dpo stage builds it) on fixed log-probabilities, against TRL's formula (the paper's
where TRL has none) written here in numpy; and `stage.loss_definition=paddlenlp`, PaddleNLP's own
definitions where they differ (ORPO, DPOP)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import compose

paddle = pytest.importorskip("paddle")

ONE_PROCESS_MODEL = SimpleNamespace(tensor_parallel_output=False, tensor_parallel_degree=1)
# policy chosen / rejected, reference chosen / rejected log-probabilities of five pairs; the policy's
# chosen log-prob falls below the reference's in three of them (DPOP's penalty)
PC, PR = np.array([-3.0, -5.5, -2.2, -7.0, -4.1]), np.array([-4.0, -5.0, -6.1, -6.5, -3.3])
RC, RR = np.array([-3.5, -5.2, -2.0, -6.0, -4.4]), np.array([-3.9, -5.6, -5.0, -6.4, -3.0])


def logsig(x):
    return -np.logaddexp(0, -x)


def sig(x):
    return 1 / (1 + np.exp(-x))


def log_odds(c, r):
    """ORPO's log odds ratio of mean per-token log-probs: log(p_c / (1 - p_c)) - log(p_r / (1 - p_r))."""
    return (c - np.log1p(-np.exp(c))) - (r - np.log1p(-np.exp(r)))


def criterion(*overrides):
    from llmx.align.losses import DPOCriterion
    from llmx.align.preference import dpo_config

    config = dpo_config(compose("stage=dpo", *overrides).stage, lora=False)
    return DPOCriterion(ONE_PROCESS_MODEL, dpo_config=config), config


def dpo_loss(overrides, pc=PC, pr=PR, rc=RC, rr=RR) -> float:
    crit, _ = criterion(*overrides)
    return float(crit.dpo_loss(*[paddle.to_tensor(x, dtype="float64") for x in (pc, pr, rc, rr)]))


B, LAM, GAMMA, SMOOTH, RATIO = 0.3, 5.0, 0.7, 0.2, 0.5
H = (PC - PR) - (RC - RR)  # the policy's log-ratio margin over the reference's
# TRL's DPOTrainer / CPOTrainer / ORPOTrainer, the Smaug paper for DPOP (per pair; the loss is their mean)
TRL = {
    "sigmoid": lambda: -(1 - SMOOTH) * logsig(B * H) - SMOOTH * logsig(-B * H),  # with cDPO's label smoothing
    "ipo": lambda: (H - 1 / (2 * B)) ** 2,
    "hinge": lambda: np.maximum(0, 1 - B * H),
    "kto_pair": lambda: np.concatenate([1 - sig(B * ((PC - RC) - max(0, np.mean(PR - RR)))),
                                        1 - sig(B * (max(0, np.mean(PC - RC)) - (PR - RR)))]),
    "sppo_hard": lambda: (PC - RC - 0.5 / B) ** 2 + (PR - RR + 0.5 / B) ** 2,
    "nca_pair": lambda: -logsig(B * (PC - RC)) - 0.5 * logsig(-B * (PC - RC)) - 0.5 * logsig(-B * (PR - RR)),
    "dpop": lambda: -logsig(B * (H - LAM * np.maximum(0, RC - PC))),  # Pal et al. 2024, eq. 3
}
OVERRIDES = {"sigmoid": [f"stage.label_smoothing={SMOOTH}"], "dpop": [f"stage.dpop_lambda={LAM}"]}


@pytest.mark.parametrize("loss_type, definition", [(t, "trl") for t in TRL] +  # PaddleNLP's DPOP: further down
                         [(t, "paddlenlp") for t in TRL if t != "dpop"])
def test_each_loss_with_a_reference_is_trls_formula(loss_type, definition):
    got = dpo_loss([f"stage.loss_type={loss_type}", f"stage.beta={B}", f"stage.pref_loss_ratio={RATIO}",
                    f"stage.loss_definition={definition}", *OVERRIDES.get(loss_type, [])])
    assert got == pytest.approx(RATIO * np.mean(TRL[loss_type]()), rel=1e-12)


@pytest.mark.parametrize("definition", ["trl", "paddlenlp"])
def test_simpo_is_trls_formula(definition):
    """TRL's CPOTrainer, loss_type=simpo (length-normalised log-probs as given, no reference):
    -(1 - eps) log sigmoid(beta (c - r) - gamma) - eps log sigmoid(-(beta (c - r) - gamma))."""
    c, r = PC / 4, PR / 4
    z = np.zeros(1)
    got = dpo_loss(["stage.loss_type=simpo", "stage.beta=2", f"stage.simpo_gamma={GAMMA}", f"stage.label_smoothing={SMOOTH}",
                    f"stage.pref_loss_ratio={RATIO}", f"stage.loss_definition={definition}"], c, r, z, z)
    u = 2 * (c - r) - GAMMA
    assert got == pytest.approx(RATIO * np.mean(-(1 - SMOOTH) * logsig(u) - SMOOTH * logsig(-u)), rel=1e-12)


def test_orpo_odds_ratio_term_is_weighted_by_beta():
    """TRL's ORPOTrainer: loss = NLL - beta * mean(log sigmoid(log odds)), on mean per-token log-probs."""
    c, r = PC / 4, PR / 4
    z = np.zeros(1)
    got = {beta: dpo_loss(["stage.loss_type=orpo", f"stage.beta={beta}", f"stage.pref_loss_ratio={RATIO}"], c, r, z, z)
           for beta in (0.1, 0.5)}
    for beta, loss in got.items():
        assert loss == pytest.approx(RATIO * beta * np.mean(-logsig(log_odds(c, r))), rel=1e-12)
    assert got[0.5] == pytest.approx(5 * got[0.1], rel=1e-12)


def test_paddlenlp_definitions_of_orpo_and_dpop():
    """PaddleNLP 3.0.0b4: ORPO's odds-ratio term without beta (beta changes nothing); DPOP's penalty
    added outside the log-sigmoid, unscaled by beta."""
    c, r = PC / 4, PR / 4
    z = np.zeros(1)
    orpo = [dpo_loss(["stage.loss_type=orpo", f"stage.beta={beta}", f"stage.pref_loss_ratio={RATIO}",
                      "stage.loss_definition=paddlenlp"], c, r, z, z) for beta in (0.1, 0.5)]
    assert orpo == [pytest.approx(RATIO * np.mean(-logsig(log_odds(c, r))), rel=1e-12)] * 2
    dpop = dpo_loss(["stage.loss_type=dpop", f"stage.beta={B}", f"stage.dpop_lambda={LAM}", f"stage.pref_loss_ratio={RATIO}",
                     "stage.loss_definition=paddlenlp"])
    paddlenlp = -logsig(B * H) + LAM * np.maximum(0, RC - PC)
    assert dpop == pytest.approx(RATIO * np.mean(paddlenlp), rel=1e-12)
    assert dpop != pytest.approx(RATIO * np.mean(TRL["dpop"]()), rel=1e-3)  # the two definitions differ here


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_through_the_whole_criterion_on_fixed_logits(beta):
    """The run's path from logits: per-token mean log-probs into the odds-ratio term (weight beta), plus the
    chosen response's NLL (weight 1 by default: ORPO's SFT term)."""
    crit, config = criterion("stage.loss_type=orpo", f"stage.beta={beta}")
    assert config.reference_free and config.loss_type == "or" and config.sft_loss_ratio == 1.0
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(1, 8, 6))
    chosen, rejected = np.zeros((1, 8), dtype="int64"), np.zeros((1, 8), dtype="int64")
    chosen[0, 2:5], rejected[0, 5:8] = [3, 1, 4], [5, 2, 2]  # prompt 0..1, chosen 2..4, rejected 5..7
    index = np.array([[0, 2, 5, 8]], dtype="int64")
    zeros = paddle.zeros([1])  # a reference-free run's "reference" log-probs (trl's DPOTrainer passes these)
    out = crit(paddle.to_tensor(logits, dtype="float32"),
               (paddle.to_tensor(chosen), paddle.to_tensor(rejected), paddle.to_tensor(index), zeros, zeros))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    lc, lr = logp[0, [2, 3, 4], [3, 1, 4]].sum(), logp[0, [5, 6, 7], [5, 2, 2]].sum()
    expected = beta * -logsig(log_odds(lc / 3, lr / 3)) + (-lc / 3)
    assert float(out[-1]) == pytest.approx(expected, rel=1e-5)


def test_loss_definition_is_checked_in_one_line():
    from helpers import input_error

    line = input_error("stage=dpo", "stage.loss_definition=hf")
    assert "stage.loss_definition" in line and "trl, paddlenlp" in line and "\n" not in line
