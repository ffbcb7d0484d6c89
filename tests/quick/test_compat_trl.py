"""llmx.compat.trl's workarounds still answer upstream's behaviour: each test fails when PaddleNLP's trl
changes what the workaround relies on (then the workaround can go, or must change)."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

trl = pytest.importorskip("paddlenlp.trl")
paddle = pytest.importorskip("paddle")

ONE_PROCESS_MODEL = SimpleNamespace(tensor_parallel_output=False, tensor_parallel_degree=1)


@pytest.mark.parametrize("name", ["DPOTrainer", "KTOTrainer"])
def test_trl_still_wraps_the_reference_with_fleet_which_fails_in_one_process(name):
    import llmx.compat.trl as fixes

    upstream = getattr(trl, name)
    # trl builds its reference (and, in evaluate, the policy) through the hook _ReferenceAsIs overrides
    assert "self._wrap_ref_model(self.ref_model)" in inspect.getsource(upstream.__init__)
    assert "self._wrap_ref_model(self.model_wrapped)" in inspect.getsource(upstream.evaluate)
    # ... and the hook still needs fleet initialised, which one process never does
    model = paddle.nn.Linear(2, 2)
    trainer = SimpleNamespace(args=SimpleNamespace(fp16=False, fp16_opt_level="O1", pipeline_parallel_degree=1))
    with pytest.raises(AttributeError, match="_user_defined_strategy"):
        upstream._wrap_ref_model(trainer, model)
    fixed = getattr(fixes, name)
    assert issubclass(fixed, upstream) and fixed._wrap_ref_model(trainer, model) is model


def test_trl_kto_loss_still_leaves_a_negative_kl_estimate_unclipped_in_one_process():
    from llmx.compat.trl import KTOCriterion

    config = SimpleNamespace(beta=0.5, desirable_weight=1.0, undesirable_weight=1.0)
    t = lambda *x: paddle.to_tensor(list(x), dtype="float64")  # noqa: E731
    # policy chosen, rejected, KL; reference chosen, rejected, KL: the KL estimate is -5 - (-4) = -1
    logps = (t(-1.0), t(-2.0), t(-5.0), t(-1.5), t(-2.5), t(-4.0))
    assert paddle.distributed.get_world_size() == 1
    _, kl = trl.KTOCriterion(ONE_PROCESS_MODEL, kto_config=config).kto_loss(*logps)
    assert float(kl) == -1.0, "trl clips the reference point in one process now: llmx.compat.trl.KTOCriterion can go"
    loss, kl = KTOCriterion(ONE_PROCESS_MODEL, kto_config=config).kto_loss(*logps)
    assert float(kl) == 0.0
    sig = lambda x: 1 / (1 + __import__("math").exp(-x))  # noqa: E731
    # z0 = max(0, KL) = 0: desirable 1 - sigmoid(beta r_c), undesirable 1 - sigmoid(-beta r_r), r = 0.5 each
    assert float(loss) == pytest.approx(((1 - sig(0.25)) + (1 - sig(-0.25))) / 2, rel=1e-12)


# one micro-batch's KL terms (policy minus reference log-probs of mismatched pairs), split 3 + 1 over two ranks
KL_TERMS = ([0.9, 0.3, 0.6], [-0.4])


def _kto_logps(terms):
    t = lambda x: paddle.to_tensor(x, dtype="float64")  # noqa: E731
    # policy chosen, rejected, KL; reference chosen, rejected, KL
    return t([-1.0]), t([-2.0]), t(terms), t([-1.5]), t([-2.5]), t([0.0] * len(terms))


def test_trl_kto_loss_still_averages_the_processes_own_kl_means(monkeypatch):
    config = SimpleNamespace(beta=0.5, desirable_weight=1.0, undesirable_weight=1.0)
    upstream = trl.KTOCriterion(ONE_PROCESS_MODEL, kto_config=config)
    other_rank = paddle.to_tensor([[sum(KL_TERMS[1]) / len(KL_TERMS[1])]], dtype="float64")
    monkeypatch.setattr(upstream, "_nested_gather", lambda mine: paddle.concat([mine, other_rank]))
    monkeypatch.setattr(paddle.distributed, "get_world_size", lambda *_: 2)
    _, kl = upstream.kto_loss(*_kto_logps(KL_TERMS[0]))
    means = [sum(t) / len(t) for t in KL_TERMS]
    assert float(kl) == pytest.approx(sum(means) / 2, rel=1e-12), \
        "trl's KL estimate under data parallelism changed: see llmx.compat.trl.KTOCriterion"


@pytest.mark.parametrize("world", [1, 2])
def test_llmx_kto_reference_point_is_the_mean_over_the_ranks_sharing_a_micro_batch(monkeypatch, world):
    """Each rank's estimate is the one of the whole micro-batch (its KL terms' sum and count all-reduced over
    kl_groups), as one process holding the 4 terms would have it."""
    from llmx.compat.trl import KTOCriterion

    config = SimpleNamespace(beta=0.5, desirable_weight=1.0, undesirable_weight=1.0)
    reduced = []

    def all_reduce(tensor, group=None):  # the other rank's sum and count, added in place
        reduced.append(group)
        tensor.add_(paddle.to_tensor([sum(KL_TERMS[1]), len(KL_TERMS[1])], dtype=tensor.dtype))

    monkeypatch.setattr(paddle.distributed, "all_reduce", all_reduce)
    criterion = KTOCriterion(ONE_PROCESS_MODEL, kto_config=config, kl_groups=["replicas"])
    alone = KTOCriterion(ONE_PROCESS_MODEL, kto_config=config)
    monkeypatch.setattr(paddle.distributed, "get_world_size", lambda *_: world)  # trl's own gather: off in both
    loss, kl = criterion.kto_loss(*_kto_logps(KL_TERMS[0]))
    z0 = sum(KL_TERMS[0] + KL_TERMS[1]) / 4
    assert reduced == ["replicas"] and float(kl) == pytest.approx(z0, rel=1e-12)
    sig = lambda x: 1 / (1 + __import__("math").exp(-x))  # noqa: E731
    assert float(loss) == pytest.approx(((1 - sig(0.5 * (0.5 - z0))) + (1 - sig(0.5 * (z0 - 0.5)))) / 2, rel=1e-12)
    # no group (one process, or replicas with whole micro-batches of their own): this rank's terms alone
    _, kl = alone.kto_loss(*_kto_logps(KL_TERMS[0]))
    assert float(kl) == pytest.approx(0.6, rel=1e-12) and reduced == ["replicas"]
