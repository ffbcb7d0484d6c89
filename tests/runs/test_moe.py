"""Mixtures of experts (mixtral, qwen2_moe, qwen3_moe) route as transformers 4.55 does: on the same hidden
states and weights, each expert gets the same tokens, the routing weights and the block output are equal;
the router's auxiliary (load-balancing) loss is transformers' `load_balancing_loss_func`, measured in
training, logged in metrics.jsonl and added to the loss where output_router_logits says so."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import read_jsonl, run_in_process

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

HIDDEN, EXPERTS, TOP_K = 16, 6, 2


def _blocks(family: str):
    """(transformers' block, llmx's block with the same weights, top-k renormalised)."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as HfMixtral
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock as HfQwen2
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock as HfQwen3

    from llmx.families import FAMILIES, fixes

    fixes.apply(FAMILIES[family].fixes, fixes.BEFORE_BUILD)
    sizes = dict(hidden_size=HIDDEN, intermediate_size=24, num_attention_heads=2, num_key_value_heads=2,
                 num_hidden_layers=1, vocab_size=32)
    if family == "mixtral":
        from paddlenlp.transformers import MixtralConfig
        from paddlenlp.transformers.mixtral.modeling import MixtralSparseMoeBlock

        moe = dict(sizes, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)
        return HfMixtral(transformers.MixtralConfig(**moe)), MixtralSparseMoeBlock(MixtralConfig(**moe)), True
    moe = dict(sizes, num_experts=EXPERTS, num_experts_per_tok=TOP_K, moe_intermediate_size=12,
               shared_expert_intermediate_size=20, norm_topk_prob=family == "qwen3_moe")
    if family == "qwen2_moe":
        from paddlenlp.transformers import Qwen2MoeConfig
        from paddlenlp.transformers.qwen2_moe.modeling import Qwen2MoeSparseMoEBlock

        return HfQwen2(transformers.Qwen2MoeConfig(**moe)), Qwen2MoeSparseMoEBlock(Qwen2MoeConfig(**moe)), False
    from llmx.models.qwen3_moe import Qwen3MoeConfig, Qwen3MoeSparseMoeBlock

    return HfQwen3(transformers.Qwen3MoeConfig(**moe)), Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(**moe)), True


def _copy_weights(hf_block, block) -> None:
    import paddle

    ours = block.state_dict()
    theirs = {k: v.detach().numpy() for k, v in hf_block.state_dict().items()}
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        ours[name].set_value(paddle.to_tensor(value.T if value.ndim == 2 else value))  # Linear: [out, in] -> [in, out]


def _tokens_per_expert(experts, hidden, hook) -> dict:
    """expert index -> the token rows it ran on (matched by value among `hidden`'s rows)."""
    seen = {}
    for e, expert in enumerate(experts):
        hook(expert, lambda rows, e=e: seen.setdefault(e, []).extend(
            int(np.abs(hidden - row).sum(-1).argmin()) for row in rows))
    return seen


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_moe_block_routes_as_transformers(family):
    import paddle

    from llmx.families.moe import top_k_routing

    torch.manual_seed(0)
    paddle.set_device("cpu")
    hf_block, block, normalize = _blocks(family)
    hf_block.eval()
    block.eval()
    _copy_weights(hf_block, block)
    x = torch.randn(2, 9, HIDDEN)
    hidden = x.reshape(-1, HIDDEN).numpy()
    theirs_seen = _tokens_per_expert(hf_block.experts, hidden, lambda m, f: m.register_forward_hook(
        lambda mod, args, out: f(args[0].detach().numpy())))
    ours_seen = _tokens_per_expert(block.experts, hidden, lambda m, f: m.register_forward_post_hook(
        lambda mod, args, out: f(args[0].numpy())))
    with torch.no_grad():
        hf_out, hf_logits = hf_block(x)
    with paddle.no_grad():
        out, logits = block(paddle.to_tensor(x.numpy()))
        weights, experts = top_k_routing(logits, TOP_K, normalize)
    # transformers' routing of its own logits (its blocks' code: softmax in float32, top-k, renormalised or not)
    probs = torch.softmax(hf_logits.float(), dim=-1)
    hf_weights, hf_experts = torch.topk(probs, TOP_K, dim=-1)
    if normalize:
        hf_weights = hf_weights / hf_weights.sum(-1, keepdim=True)
    assert np.abs(logits.numpy() - hf_logits.numpy()).max() < 1e-6
    assert (experts.numpy() == hf_experts.numpy()).all()
    assert np.abs(weights.numpy() - hf_weights.numpy()).max() < 1e-6
    assert {e: sorted(t) for e, t in ours_seen.items()} == {e: sorted(t) for e, t in theirs_seen.items()}
    assert sum(len(t) for t in ours_seen.values()) == 18 * TOP_K  # every token, top-k experts each
    assert np.abs(out.numpy() - hf_out.numpy()).max() < 1e-5


def test_load_balancing_loss_is_transformers():
    import paddle
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from llmx.families.moe import load_balancing_loss

    torch.manual_seed(0)
    logits = [torch.randn(3 * 5, EXPERTS) * 2 for _ in range(4)]  # 4 layers, batch 3 x 5 tokens
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    mask[2, :4] = 0
    ours = [paddle.to_tensor(t.numpy()) for t in logits]
    for m in (None, mask):
        theirs = float(load_balancing_loss_func(tuple(logits), EXPERTS, TOP_K, m))
        got = float(load_balancing_loss(ours, EXPERTS, TOP_K, None if m is None else paddle.to_tensor(m.numpy())))
        assert abs(got - theirs) < 1e-6, (m is not None, got, theirs)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_model_aux_loss_equals_transformers_and_joins_the_loss_as_configured(family, tmp_path):
    """A tiny transformers model converted to llmx: in training, llmx's measured aux loss is transformers'
    `aux_loss` on a padded batch; with output_router_logits=True llmx's loss is transformers' (cross entropy
    plus router_aux_loss_coef x aux), without it the plain cross entropy."""
    import paddle
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from llmx.convert.hf import hf_to_llmx
    from llmx.families import FAMILIES, fixes

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, router_aux_loss_coef=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = {"mixtral": lambda: transformers.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2),
              "qwen2_moe": lambda: transformers.Qwen2MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                                               moe_intermediate_size=8, shared_expert_intermediate_size=16),
              "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                                               moe_intermediate_size=8, norm_topk_prob=True)}[family]()
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # routers far from uniform
    hf.save_pretrained(tmp_path / "hf")
    hf_to_llmx(tmp_path / "hf", tmp_path / "llmx")
    ids = np.random.RandomState(0).randint(3, 64, size=(2, 8))
    mask = np.ones((2, 8), dtype="int64")
    mask[1, :3] = 0
    # no loss predicted from padding (whose logits the libraries compute apart)
    targets = np.where(np.concatenate([mask[:, :1], mask[:, :-1]], axis=1) == 1, ids, -100)
    # transformers' router logits and its load_balancing_loss_func on them (its Qwen2-MoE model's own call
    # fails on CPU in 4.55.4: it slices by `device.index`, None there; on one GPU it is this formula)
    router_logits = []
    for name, module in hf.named_modules():
        if name.endswith(".gate"):
            module.register_forward_hook(lambda mod, args, out: router_logits.append(out))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(targets))
        ref_aux = float(load_balancing_loss_func(tuple(router_logits), 4, 2, torch.tensor(mask)))
    fam = FAMILIES[family]
    fixes.apply(fam.fixes, fixes.BEFORE_BUILD)
    model = fam.load_class().from_pretrained(str(tmp_path / "llmx"), dtype="float32")
    model.train()  # (no dropout in these configs)
    labels = paddle.to_tensor(np.concatenate([targets[:, 1:], np.full((2, 1), -100)], axis=1))  # llmx's: shifted
    inputs = dict(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), labels=labels)
    plain = float(model(**inputs)[0])
    assert len(router_logits) == 2 and abs(float(model.llmx_router_aux_loss) - ref_aux) < 1e-5
    model.config.output_router_logits = True
    with_aux = float(model(**inputs)[0])
    assert abs(with_aux - plain - 0.1 * ref_aux) < 1e-5
    assert abs(plain - float(ref.loss)) < 1e-4  # (transformers' loss without output_router_logits)


def test_sft_logs_the_router_aux_loss(tmp_path):
    run_in_process(tmp_path / "run", "model=qwen3_moe", "stage=sft", "stage.train.max_steps=3",
                   "stage.train.logging_steps=1", "stage.train.save_steps=3", f"hydra.run.dir={tmp_path / 'run'}")
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 3
    # balanced routing gives top_k (2); every token on one expert pair, num_experts (4) at most
    assert all(1.0 <= r["router_aux_loss"] <= 4.0 for r in rows), rows


def test_refusals_are_one_line():
    """The aux loss in the loss under a pipeline (whose stages never run the whole forward) is refused before
    launch; Qwen2-MoE's dense layers (PaddleNLP's decoder layer knows no layer index) when the model is built."""
    from helpers import compose, input_error

    from llmx.engine.model import build_model
    from llmx.errors import ConfigError

    assert input_error("model=qwen3_moe", "parallel=pp2", "model.overrides.output_router_logits=true") == (
        "llmx: config error: parallel.pp=2: the router's auxiliary loss (output_router_logits=true) is computed over "
        "the whole model's forward, which a pipeline never runs: it trains with parallel.pp=1")
    with pytest.raises(ConfigError, match="^model family qwen2_moe: dense layers"):
        build_model(compose("model=qwen2_moe", "model.overrides.decoder_sparse_step=2").model, None, 0)
