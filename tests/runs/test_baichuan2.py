"""Baichuan 2 against its published formulas, written here independently in numpy: ALiBi's slopes (Press et al.;
Baichuan's 13B code interleaves them the same way for a head count that is not a power of two), its bias
(slope * (j - i) on a causal mask; Baichuan's training code writes it so, its inference code as slope * j, the
same after softmax) and NormHead's logits (hidden states times the head's rows scaled to unit L2 norm). A whole
tiny ALiBi model is recomputed from its weights; conversion to and from Baichuan's Hugging Face layout keeps
ALiBi and NormHead."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import compose


def published_slopes(n: int) -> list:
    """ALiBi's head slopes: for a power of two n, the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8); else
    those of the largest power of two below n, then every other slope of twice that power, as many as missing."""
    def geometric(p):
        return [2.0 ** (-8.0 * (i + 1) / p) for i in range(p)]

    p = 2 ** int(math.floor(math.log2(n)))
    return geometric(p) if p == n else geometric(p) + geometric(2 * p)[0::2][: n - p]


def published_bias(n_heads: int, length: int) -> np.ndarray:
    """[heads, length, length]: slope * (key - query) where a query may look (key <= query), -inf elsewhere."""
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    rel = np.where(j <= i, (j - i).astype(np.float64), -np.inf)
    return np.array(published_slopes(n_heads))[:, None, None] * rel[None]


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_logits(state: dict, config, ids: np.ndarray) -> np.ndarray:
    """Baichuan2-13B's forward (ALiBi, no RoPE, SwiGLU, RMSNorm, NormHead) from the model's weights, in float64."""
    w = {k: v.astype(np.float64) for k, v in state.items()}
    heads, eps = config.num_attention_heads, config.rms_norm_eps
    x = w["llama.embed_tokens.weight"][ids]  # [b, s, h]
    b, s, h = x.shape
    d = h // heads
    bias = published_bias(heads, s)
    for n in range(config.num_hidden_layers):
        p = f"llama.layers.{n}."
        y = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q, k, v = (np.einsum("bsh,ho->bso", y, w[p + f"self_attn.{t}_proj.weight"]).reshape(b, s, heads, d)
                   for t in "qkv")
        scores = np.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(d) + bias[None]
        att = np.einsum("bnqk,bknd->bqnd", softmax(scores), v).reshape(b, s, h)
        x = x + att @ w[p + "self_attn.o_proj.weight"]
        y = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = y @ w[p + "mlp.gate_proj.weight"], y @ w[p + "mlp.up_proj.weight"]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"]
    x = rms_norm(x, w["llama.norm.weight"], eps)
    rows = w["lm_head.weight"].T  # HF's [vocab, hidden]
    return x @ (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).T


def _model(*overrides):
    import paddle

    from llmx.engine.model import build_model

    paddle.set_device("cpu")
    model = build_model(compose("model=baichuan2", *overrides).model, None, seed=0)
    with paddle.no_grad():  # a head far from unit norm, rows of unlike norms: NormHead must matter
        model.lm_head.weight.set_value(model.lm_head.weight * paddle.linspace(0.5, 8.0, model.config.vocab_size))
    model.eval()
    return model, paddle


def _logits(out):
    return (out[0] if isinstance(out, (tuple, list)) else out.logits).numpy()


@pytest.mark.parametrize("heads", [8, 12, 40])  # a power of two, two that are not (40: Baichuan2-13B's)
def test_alibi_slopes_and_bias_are_the_published_ones(heads):
    import paddle
    from paddlenlp.transformers.llama.modeling import _get_interleave, build_alibi_tensor

    np.testing.assert_allclose(_get_interleave(heads), published_slopes(heads), rtol=1e-12)
    if heads == 8:
        assert published_slopes(8) == [2.0 ** -k for k in range(1, 9)]  # the paper's own example
    # The bias PaddleNLP adds (slope * key, mask apart) differs from the published one by a constant per row.
    length = 7
    ours = build_alibi_tensor(paddle.ones([1, length], "bool"), heads, paddle.float32).numpy()[0, :, 0]  # [h, s]
    ref = published_bias(heads, length)
    for i in range(length):
        shifted = ours[:, : i + 1] - ours[:, i: i + 1]
        np.testing.assert_allclose(shifted, ref[:, i, : i + 1], rtol=1e-6, atol=1e-6)


def test_norm_head_logits_are_hidden_states_times_unit_rows_in_training_and_eval():
    model, paddle = _model()
    ids = paddle.to_tensor([[1, 40, 41, 42, 43, 44, 45]])
    with paddle.no_grad():
        hidden = model.llama(ids)[0].numpy().astype(np.float64)
        logits = _logits(model(ids))
        model.train()
        train_logits = _logits(model(ids))
    rows = model.lm_head.weight.numpy().T.astype(np.float64)
    ref = hidden @ (rows / np.linalg.norm(rows, axis=1, keepdims=True)).T
    assert np.abs(logits - ref).max() < 1e-5, np.abs(logits - ref).max()
    np.testing.assert_array_equal(train_logits, logits)  # Baichuan's training and eval heads agree
    plain = hidden @ rows.T
    assert np.abs(plain - ref).max() > 1.0  # (the raw head would give other logits)
    # A row's scale does not matter; its direction does. And the head learns through the normalisation.
    out = model(ids)
    paddle.nn.functional.cross_entropy((out[0] if isinstance(out, tuple) else out.logits)[0, :-1], ids[0, 1:]).backward()
    grad = model.lm_head.weight.grad.numpy()
    w = model.lm_head.weight.numpy()
    # d loss / d w_v is orthogonal to w_v for a normalised row: scaling a row is a flat direction
    cos = np.abs((grad * w).sum(0)) / (np.linalg.norm(grad, axis=0) * np.linalg.norm(w, axis=0) + 1e-30)
    assert cos.max() < 1e-4 and np.abs(grad).max() > 0


def test_tiny_alibi_model_equals_the_published_forward_and_caches_the_same():
    model, paddle = _model("model.overrides.alibi=true")
    assert model.config.alibi and not model.config.rope
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    rng = np.random.RandomState(0)
    ids = rng.randint(4, 500, size=(2, 9))
    with paddle.no_grad():
        ours = _logits(model(paddle.to_tensor(ids)))
    ref = reference_logits(state, model.config, ids)
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    # Left padding moves every key's ALiBi position alike: a padded row computes what it computes alone.
    padded = np.concatenate([np.full((1, 3), 3), ids[:1, :6]], axis=1)
    mask = np.array([[0, 0, 0] + [1] * 6])
    with paddle.no_grad():
        alone = _logits(model(paddle.to_tensor(ids[:1, :6])))
        left = _logits(model(paddle.to_tensor(padded), attention_mask=paddle.to_tensor(mask)))
        gen, _ = model.generate(input_ids=paddle.to_tensor(ids[:1]), attention_mask=paddle.ones([1, 9], "int64"),
                                max_new_tokens=8, min_new_tokens=8, decode_strategy="greedy_search")
    assert np.abs(left[0, 3:] - alone[0]).max() < 1e-4
    # Greedy tokens with the KV cache equal those of the published forward over the whole sequence.
    seq = ids[:1]
    for _ in range(8):
        seq = np.concatenate([seq, reference_logits(state, model.config, seq)[:, -1].argmax(-1)[:, None]], axis=1)
    assert gen[0].numpy().tolist() == seq[0, 9:].tolist()


def test_inference_engine_batches_alibi_prompts_as_the_published_forward_decodes_them():
    """llmx's engine (KV cache, prompts of several lengths left-padded in one batch): the greedy tokens of the
    published forward over each whole sequence."""
    from llmx.engine.model import build_tokenizer
    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    model, paddle = _model("model.overrides.alibi=true")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    tokenizer = build_tokenizer(compose("model=baichuan2").model)
    rng = np.random.RandomState(2)
    prompts = [rng.randint(4, 500, size=n).tolist() for n in (5, 9, 3)]
    done = dynamic_engine(model, tokenizer, max_batch=3).generate(prompts, SamplingParams(max_new_tokens=6,
                                                                                           ignore_eos=True))
    for prompt, req in zip(prompts, done):
        seq = np.array([prompt])
        for _ in range(6):
            seq = np.concatenate([seq, reference_logits(state, model.config, seq)[:, -1].argmax(-1)[:, None]], axis=1)
        assert req.tokens == seq[0, len(prompt):].tolist()


def test_hf_layout_round_trip_keeps_alibi_and_tells_baichuan2_from_baichuan(tmp_path):
    """The 13B's config.json has no max_position_embeddings (its code is ALiBi's) and Baichuan 2's has
    z_loss_weight; llmx writes both that way and reads them back to the same model."""
    from llmx.convert.hf import hf_to_llmx, llmx_to_hf
    from llmx.families import family_of_hf_config
    from llmx.models.baichuan2 import Baichuan2ForCausalLM

    # composed ops, as `back` below has them (from_pretrained alone switches in no kernel): bit for bit
    model, paddle = _model("model.overrides.alibi=true", "model.fused_ops=off")
    model.save_pretrained(str(tmp_path / "pd"), safe_serialization=True)
    llmx_to_hf(tmp_path / "pd", tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "baichuan" and hf["architectures"] == ["BaichuanForCausalLM"]
    assert "max_position_embeddings" not in hf and "alibi" not in hf and hf["z_loss_weight"] == 0
    assert family_of_hf_config(hf) == "baichuan2"
    assert family_of_hf_config({k: v for k, v in hf.items() if k != "z_loss_weight"}) == "baichuan"
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.W_pack.weight"].shape == (192, 64)
    np.testing.assert_array_equal(tensors["lm_head.weight"], model.lm_head.weight.numpy().T)  # stored as trained
    assert hf_to_llmx(tmp_path / "hf", tmp_path / "back")["family"] == "baichuan2"
    back = Baichuan2ForCausalLM.from_pretrained(str(tmp_path / "back"), dtype="float32")
    back.eval()
    assert back.config.alibi
    ids = paddle.to_tensor([[1, 40, 41, 42, 43, 44, 45]])
    with paddle.no_grad():
        np.testing.assert_array_equal(_logits(back(ids)), _logits(model(ids)))
