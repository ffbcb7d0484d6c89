"""DeepSeek-V3's mixture of experts in llmx (PaddleNLP's DeepseekV2MoE with llmx.families.deepseek_v3's
routing) against transformers 4.55.4's DeepseekV3TopkRouter and DeepseekV3MoE, on fixed hidden states with the
same weights: grouped top-k on bias-corrected sigmoid scores, weights from the uncorrected scores, normalised
and scaled by routed_scaling_factor, and the shared expert."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

HIDDEN, EXPERTS, TOP_K = 16, 16, 3


@pytest.fixture(scope="module")
def both():
    """(transformers' DeepseekV3MoE, llmx's DeepseekV2MoE, hidden states [4, 6, HIDDEN]) with one set of weights: a
    random router, a correction bias large enough to change choices, random experts."""
    import paddle
    from paddlenlp.transformers import DeepseekV3Config
    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2MoE
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    from llmx.families import FAMILIES, fixes

    fixes.apply(FAMILIES["deepseek_v3"].fixes, fixes.BEFORE_BUILD)
    shape = dict(hidden_size=HIDDEN, moe_intermediate_size=8, n_routed_experts=EXPERTS, n_shared_experts=2,
                 num_experts_per_tok=TOP_K, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5)
    torch.manual_seed(0)
    ref = DeepseekV3MoE(transformers.DeepseekV3Config(**shape)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        ref.gate.e_score_correction_bias.copy_(torch.randn(EXPERTS) * 0.2)
    ours = DeepseekV2MoE(DeepseekV3Config(**shape, topk_method="noaux_tc", scoring_func="sigmoid"))
    ours.eval()
    state = {}
    for name, value in ref.state_dict().items():
        value = value.numpy()
        # Linear weights and the router: torch keeps [out, in], paddle [in, out]
        state[name] = value.T if value.ndim == 2 else value
    missing, unexpected = ours.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    assert not missing and not unexpected
    hidden = np.random.RandomState(0).randn(4, 6, HIDDEN).astype("float32")
    return ref, ours, hidden


def test_expert_ids_and_weights_equal_transformers_router(both):
    import paddle

    from llmx.families.deepseek_v3 import route

    ref, ours, hidden = both
    with torch.no_grad():
        ref_ids, ref_weights = ref.gate(torch.tensor(hidden))
        plain = ref.gate.get_topk_indices(torch.sigmoid(torch.tensor(hidden).reshape(-1, HIDDEN) @ ref.gate.weight.T)
                                          - ref.gate.e_score_correction_bias)  # the choice without the bias
    ids, weights = route(ours.gate, paddle.to_tensor(hidden.reshape(-1, HIDDEN)))
    order, ref_order = np.argsort(ids.numpy(), -1), np.argsort(ref_ids.numpy(), -1)  # (top-k is unsorted)
    ids, ref_ids = np.take_along_axis(ids.numpy(), order, -1), np.take_along_axis(ref_ids.numpy(), ref_order, -1)
    weights = np.take_along_axis(weights.numpy(), order, -1)
    ref_weights = np.take_along_axis(ref_weights.numpy(), ref_order, -1)
    assert (ids == ref_ids).all()
    assert np.abs(weights - ref_weights).max() < 1e-6
    assert np.allclose(weights.sum(-1), 2.5, atol=1e-5)  # normalised, then routed_scaling_factor
    assert (np.sort(plain.numpy(), -1) != ids).any(), "the bias never changed a choice: the test would not see it"


def test_moe_output_with_shared_experts_equals_transformers(both):
    import paddle

    ref, ours, hidden = both
    with torch.no_grad():
        expected = ref(torch.tensor(hidden)).numpy()
        shared = ref.shared_experts(torch.tensor(hidden)).numpy()
    with paddle.no_grad():
        got = ours(paddle.to_tensor(hidden)).numpy()
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(expected - shared).max() > 1e-2  # the routed experts add something
