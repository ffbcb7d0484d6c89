"""llmx.rl.losses against independent numpy computations on fixed tensors (no model, no training)."""
from __future__ import annotations

import numpy as np
import pytest

RNG = np.random.RandomState(7)
ROWS, T = 4, 9
# responses of different lengths and starts (prompt before, padding after); one row of a single token
MASK = np.zeros((ROWS, T), "float32")
for i, (start, n) in enumerate([(2, 5), (0, 9), (4, 1), (3, 4)]):
    MASK[i, start:start + n] = 1
REWARDS = RNG.randn(ROWS, T).astype("float32") * MASK
VALUES = RNG.randn(ROWS, T).astype("float32") * MASK
LOGP = -RNG.rand(ROWS, T).astype("float32") * 3
OLD_LOGP = LOGP + RNG.randn(ROWS, T).astype("float32") * 0.3
REF_LOGP = LOGP + RNG.randn(ROWS, T).astype("float32") * 0.5
ADV = RNG.randn(ROWS, T).astype("float32")


def t(x):
    import paddle

    return paddle.to_tensor(x)


def _gae_numpy(r, v, gamma, lam):
    """One response at a time, on its own tokens only (the textbook recursion)."""
    adv = np.zeros_like(r)
    last = 0.0
    for i in reversed(range(len(r))):
        next_v = v[i + 1] if i + 1 < len(r) else 0.0
        last = r[i] + gamma * next_v - v[i] + gamma * lam * last
        adv[i] = last
    return adv


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_equals_the_per_response_recursion(gamma, lam):
    from llmx.rl.losses import gae

    adv, ret = gae(t(REWARDS), t(VALUES), t(MASK), gamma, lam)
    adv, ret = adv.numpy(), ret.numpy()
    for i in range(ROWS):
        on = MASK[i] == 1
        expected = _gae_numpy(REWARDS[i, on], VALUES[i, on], gamma, lam)
        np.testing.assert_allclose(adv[i, on], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ret[i, on], expected + VALUES[i, on], rtol=1e-5, atol=1e-6)
        assert not adv[i, ~on].any() and not ret[i, ~on].any()


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten(shift_mean):
    from llmx.rl.losses import whiten

    x = RNG.randn(ROWS, T).astype("float32") * 3 + 1
    out = whiten(t(x), t(MASK), shift_mean=shift_mean).numpy()
    vals = x[MASK == 1]
    expected = (vals - vals.mean()) / np.sqrt(vals.var() + 1e-8) + (0 if shift_mean else vals.mean())
    np.testing.assert_allclose(out[MASK == 1], expected, rtol=1e-5, atol=1e-5)
    assert not out[MASK == 0].any()


def test_whiten_with_a_sum_over_ranks_uses_global_moments():
    """Rows 0-1 whitened on "rank 0", with `reduce` adding rank 1's partial sums (rows 2-3) as all_sum
    would, equal the same rows of the whole batch whitened in one process."""
    import paddle

    from llmx.rl.losses import whiten

    x = RNG.randn(ROWS, T).astype("float32")
    whole = whiten(t(x), t(MASK)).numpy()
    other_x, other_m = x[2:], MASK[2:]
    mean = x[MASK == 1].mean()
    # rank 1's partials, in the order whiten reduces them: token count, sum, squared deviations
    partials = iter([other_m.sum(), (other_x * other_m).sum(), (((other_x - mean) ** 2) * other_m).sum()])
    first = whiten(t(x[:2]), t(MASK[:2]), reduce=lambda v: v + paddle.to_tensor(np.float32(next(partials)))).numpy()
    np.testing.assert_allclose(first, whole[:2], rtol=1e-4, atol=1e-5)


def test_clipped_policy_loss():
    from llmx.rl.losses import policy_loss

    clip = 0.2
    loss, clipfrac = policy_loss(t(LOGP), t(OLD_LOGP), t(ADV), t(MASK), clip)
    ratio = np.exp(LOGP - OLD_LOGP)
    a, b = -ADV * ratio, -ADV * np.clip(ratio, 1 - clip, 1 + clip)
    per_token = np.maximum(a, b)
    np.testing.assert_allclose(float(loss), per_token[MASK == 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(clipfrac), (b > a)[MASK == 1].mean(), rtol=1e-6)
    assert 0 < float(clipfrac) < 1  # the fixture exercises both branches
    # with a global token count (data parallel), the masked sum over it
    loss2, _ = policy_loss(t(LOGP), t(OLD_LOGP), t(ADV), t(MASK), clip, count=t(np.float32(50)))
    np.testing.assert_allclose(float(loss2), per_token[MASK == 1].sum() / 50, rtol=1e-5)


def test_clipped_value_loss():
    from llmx.rl.losses import value_loss

    clip = 0.3
    new = VALUES + RNG.randn(ROWS, T).astype("float32") * 0.5
    returns = RNG.randn(ROWS, T).astype("float32")
    loss, clipfrac = value_loss(t(new), t(VALUES), t(returns), t(MASK), clip)
    clipped = VALUES + np.clip(new - VALUES, -clip, clip)
    a, b = (new - returns) ** 2, (clipped - returns) ** 2
    np.testing.assert_allclose(float(loss), 0.5 * np.maximum(a, b)[MASK == 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(clipfrac), (b > a)[MASK == 1].mean(), rtol=1e-6)


def test_kl_estimators():
    from llmx.rl.losses import kl_estimate

    log_r = LOGP - REF_LOGP
    expected = {"k1": log_r, "k2": 0.5 * log_r ** 2, "k3": np.exp(-log_r) - 1 + log_r}
    for kind, value in expected.items():
        np.testing.assert_allclose(kl_estimate(t(LOGP), t(REF_LOGP), kind).numpy(), value, rtol=1e-5, atol=1e-6)
    assert (kl_estimate(t(LOGP), t(REF_LOGP), "k3").numpy() >= 0).all()


def test_kl_estimators_are_unbiased_where_claimed():
    """Sampled from p, the mean of k1 and k3 approaches KL(p || q) (k2's does not in general)."""
    from llmx.rl.losses import kl_estimate

    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3])
    exact = float((p * np.log(p / q)).sum())
    draws = np.random.RandomState(0).choice(3, size=200_000, p=p)
    lp, lq = np.log(p[draws]).astype("float32"), np.log(q[draws]).astype("float32")
    for kind in ("k1", "k3"):
        assert abs(float(kl_estimate(t(lp), t(lq), kind).numpy().mean()) - exact) < 0.01


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages(scale):
    from llmx.rl.losses import group_advantages

    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 2.0, 0.0], "float32")
    out = group_advantages(t(rewards), 4, scale=scale).numpy()
    for g in range(3):
        r = rewards[4 * g:4 * g + 4]
        expected = r - r.mean()
        if scale:
            expected = expected / (r.std(ddof=1) + 1e-6)
        np.testing.assert_allclose(out[4 * g:4 * g + 4], expected, rtol=1e-5, atol=1e-6)
    assert not out[4:8].any()  # a group of equal rewards teaches nothing


def test_sequence_mean_and_entropy():
    import paddle

    from llmx.rl.losses import entropy, sequence_mean, token_logps

    x = RNG.randn(ROWS, T).astype("float32")
    per_row = [(x[i] * MASK[i]).sum() / MASK[i].sum() for i in range(ROWS)]
    np.testing.assert_allclose(float(sequence_mean(t(x), t(MASK))), np.mean(per_row), rtol=1e-5)
    np.testing.assert_allclose(float(sequence_mean(t(x), t(MASK), rows=10)), np.sum(per_row) / 10, rtol=1e-5)
    logits = RNG.randn(ROWS, T, 5).astype("float32")
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(float(entropy(t(logits), t(MASK))), ent[MASK == 1].mean(), rtol=1e-5)
    tokens = RNG.randint(0, 5, (ROWS, T))
    np.testing.assert_allclose(token_logps(t(logits), paddle.to_tensor(tokens)).numpy(),
                               np.take_along_axis(logp, tokens[..., None], -1)[..., 0], rtol=1e-5, atol=1e-6)


def test_adaptive_kl_controller():
    from llmx.rl.losses import KLController

    fixed = KLController(0.1)
    fixed.update(5.0, 1000)
    assert fixed.value == 0.1
    c = KLController(0.1, target=1.0, horizon=1000)
    c.update(2.0, 100)  # error clipped to +0.2: x (1 + 0.2 * 100 / 1000)
    assert c.value == pytest.approx(0.1 * 1.02)
    c.update(0.5, 100)  # error -0.5 clipped to -0.2
    assert c.value == pytest.approx(0.1 * 1.02 * 0.98)
