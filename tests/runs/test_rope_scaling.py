"""RoPE scaling (model.rope_scaling, llmx.engine.rope) against transformers 4.55.4 itself, at sequences longer than
the original context: a tiny model's logits for every family transformers has x every scaling type; the rotary
tables of the families it has no class for; a checkpoint's config.json rope_scaling kept through conversion both
ways. All in this process, tiny models (one conversion per family)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import compose

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

CONTEXT = 32  # max_position_embeddings of the tiny models
LONG = 48  # the sequence run: past the context (and past llama3's and yarn's original 16)
_C = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          max_position_embeddings=CONTEXT, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Mistral's and Mixtral's head_dim is given as their published config.json files give it: left at None,
# transformers 4.55.4's dynamic and YaRN functions read the None (getattr with a default) and fail.
HF_CONFIGS = {
    "llama": lambda **k: transformers.LlamaConfig(**_C, num_key_value_heads=2, **k),
    "mistral": lambda **k: transformers.MistralConfig(**_C, num_key_value_heads=2, head_dim=8, sliding_window=None,
                                                      **k),
    "mixtral": lambda **k: transformers.MixtralConfig(**_C, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                                                      num_experts_per_tok=2, **k),
    "qwen2": lambda **k: transformers.Qwen2Config(**_C, num_key_value_heads=2, **k),
    "gemma": lambda **k: transformers.GemmaConfig(**_C, num_key_value_heads=1, head_dim=16, **k),
    "qwen2_moe": lambda **k: transformers.Qwen2MoeConfig(**_C, num_key_value_heads=2, moe_intermediate_size=16,
                                                         shared_expert_intermediate_size=48, num_experts=4,
                                                         num_experts_per_tok=2, **k),
    "qwen3_moe": lambda **k: transformers.Qwen3MoeConfig(**_C, num_key_value_heads=2, head_dim=16,
                                                         moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                                         norm_topk_prob=True, **k),
    # test_convert's: multi-head latent attention (the rotary part: 8 of each head's 16 query/key dims), a dense
    # first layer, then routed and shared experts
    "deepseek_v3": lambda **k: transformers.DeepseekV3Config(**_C, num_key_value_heads=4, q_lora_rank=16,
                                                             kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                                                             v_head_dim=8, n_routed_experts=8, n_shared_experts=1,
                                                             num_experts_per_tok=2, moe_intermediate_size=16,
                                                             n_group=4, topk_group=2, first_k_dense_replace=1, **k),
    # Windows (8) shorter than the sequence; eager: transformers' sdpa attention drops Gemma 2's soft-capping.
    "gemma2": lambda **k: transformers.Gemma2Config(**_C, num_key_value_heads=2, head_dim=8, sliding_window=8,
                                                    query_pre_attn_scalar=6, attn_logit_softcapping=5.0,
                                                    final_logit_softcapping=5.0, attn_implementation="eager", **k),
    # Sliding layers rotate with their own base, unscaled in transformers: only the full layer's rotation is scaled.
    "gemma3": lambda **k: transformers.Gemma3TextConfig(**_C, num_key_value_heads=2, head_dim=8, sliding_window=8,
                                                        sliding_window_pattern=2, query_pre_attn_scalar=6,
                                                        rope_local_base_freq=100.0, **k),
    "qwen3": lambda **k: transformers.Qwen3Config(**_C, num_key_value_heads=2, head_dim=16, **k),
}
SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    # DeepSeek-V3's config.json shape (factor 40 = 163840 / 4096 there): mscale_all_dim also sharpens DeepSeek's
    # softmax by yarn_mscale(factor, mscale_all_dim) squared, beside the tables' attention factor (1 here)
    "yarn_deepseek": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
}
TOLERANCE = 1e-5  # relative to the logits' largest magnitude; measured at most ~3e-6 (gemma3; float32)


def _random_hf(config, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _hf_load(hf_dir, **kwargs):
    """A saved model, with eager attention: config.json does not keep attn_implementation, and transformers'
    default sdpa attention drops Gemma 2's attention soft-capping."""
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", **kwargs).eval()


def _hf_scaled(hf_dir, scaling: dict):
    """The saved model under `scaling` (set on its config: Mistral's and Mixtral's config classes do not list
    rope_scaling, which their rotary embeddings read all the same)."""
    config = transformers.AutoConfig.from_pretrained(hf_dir)
    config.rope_scaling = dict(scaling)
    return _hf_load(hf_dir, config=config)


def _hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _llmx_model(family: str, model_dir, *overrides: str):
    from llmx.engine.model import build_model

    cfg = compose(f"model={family}", f"model.name_or_path={model_dir}", *overrides)
    model = build_model(cfg.model, None, seed=0)
    model.eval()
    return model


def _llmx_logits(model, ids) -> np.ndarray:
    import paddle

    with paddle.no_grad():
        out = model(paddle.to_tensor(ids))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return (out if isinstance(out, paddle.Tensor) else out.logits).numpy()


def _relative(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _override(scaling: dict) -> str:
    return "model.rope_scaling={" + ",".join(f"{k}:{v}" for k, v in scaling.items()) + "}"


@pytest.fixture(scope="module")
def unscaled(tmp_path_factory):
    """family -> (llmx dir, HF dir): one tiny random model per family, saved by transformers, converted once."""
    from llmx.convert.hf import hf_to_llmx

    root = tmp_path_factory.mktemp("rope")
    out = {}
    for family, make in HF_CONFIGS.items():
        _random_hf(make()).save_pretrained(root / f"{family}-hf")
        hf_to_llmx(root / f"{family}-hf", root / family)
        out[family] = (root / family, root / f"{family}-hf")
    return out


def test_every_family_and_scaling_type_gives_transformers_logits_past_the_context(unscaled):
    """The matrix: each family's converted model with model.rope_scaling=<type> against transformers' model of the
    same weights loaded with that rope_scaling, on a sequence of LONG > max_position_embeddings tokens."""
    ids = np.random.RandomState(1).randint(3, 128, size=(2, LONG))
    worst, failures = {}, []
    for family, (model_dir, hf_dir) in unscaled.items():
        unscaled_ref = _hf_logits(_hf_load(hf_dir), ids)
        for kind, scaling in SCALINGS.items():
            hf_model = _hf_scaled(hf_dir, scaling)
            ref = _hf_logits(hf_model, ids)
            assert _relative(ref, unscaled_ref) > 1e-3, f"{family} {kind}: the scaling changes nothing here"
            diff = _relative(_llmx_logits(_llmx_model(family, model_dir, _override(scaling)), ids), ref)
            worst[kind] = max(worst.get(kind, 0.0), diff)
            if not diff < TOLERANCE:
                failures.append(f"{family} {kind}: {diff:.2e}")
    print("largest relative logit difference per type:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert not failures, failures


def test_dynamic_ntk_greedy_generation_refits_as_transformers_does(unscaled):
    """Dynamic NTK refits its frequencies at every step past the context (the KV cache keeps the keys rotated
    before): 12 greedy tokens from 28 run to 40 positions and equal transformers' generate."""
    import paddle

    model_dir, hf_dir = unscaled["llama"]
    scaling = SCALINGS["dynamic"]
    ids = np.random.RandomState(2).randint(3, 128, size=(1, 28))
    hf_model = _hf_scaled(hf_dir, scaling)
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids)), max_new_tokens=12,
                                min_new_tokens=12, do_sample=False, pad_token_id=0)[0, 28:].tolist()
    model = _llmx_model("llama", model_dir, _override(scaling))
    with paddle.no_grad():
        ours, _ = model.generate(input_ids=paddle.to_tensor(ids), attention_mask=paddle.ones([1, 28], "int64"),
                                 max_new_tokens=12, min_new_tokens=12, decode_strategy="greedy_search",
                                 eos_token_id=2, pad_token_id=0)
    assert ours[0].numpy().tolist() == ref


@pytest.mark.parametrize("family", ["baichuan", "baichuan2", "yuan"])
def test_families_without_a_transformers_class_have_transformers_rotary_tables(family):
    """Baichuan (PaddleNLP's Llama class), Baichuan 2's 7B (llmx's class on it) and Yuan: their rotary layers'
    cos/sin at positions past the context, for every type, equal transformers' LlamaRotaryEmbedding of the same
    head size, base and scaling."""
    import paddle

    from llmx.engine.model import build_model
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    positions = torch.arange(3 * CONTEXT)[None]
    for kind, scaling in SCALINGS.items():
        cfg = compose(f"model={family}", f"model.overrides.max_position_embeddings={CONTEXT}", _override(scaling))
        layer = next(sub for name, sub in build_model(cfg.model, None, seed=0).named_sublayers()
                     if name.endswith("rotary_emb"))
        cos, sin = layer(paddle.zeros([1]), seq_len=3 * CONTEXT)
        hf_config = transformers.LlamaConfig(hidden_size=layer.dim * 4, num_attention_heads=4, rope_theta=layer.base,
                                             max_position_embeddings=CONTEXT, rope_scaling=dict(scaling))
        hf_cos, hf_sin = LlamaRotaryEmbedding(hf_config)(torch.zeros(1), positions)
        for ours, ref in ((cos, hf_cos), (sin, hf_sin)):
            diff = np.abs(ours.numpy().reshape(ref.shape) - ref.numpy()).max()
            assert diff < 1e-5, f"{family} {kind}: rotary tables differ by {diff}"


def test_a_checkpoints_rope_scaling_survives_conversion_both_ways(tmp_path):
    """Llama 3.1's, Qwen2.5's and DeepSeek-V3's config.json spellings (rope_type llama3; the older `type: yarn`
    with original_max_position_embeddings, DeepSeek's with mscale and mscale_all_dim): HF -> llmx keeps
    rope_scaling in the llmx config.json and the model computes transformers' logits without model.rope_scaling;
    llmx -> HF writes it back and transformers' model of the export computes the same logits."""
    from llmx.convert.hf import hf_to_llmx, llmx_to_hf

    cases = {"llama": SCALINGS["llama3"],
             "qwen2": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
             "deepseek_v3": SCALINGS["yarn_deepseek"]}
    ids = np.random.RandomState(3).randint(3, 128, size=(1, LONG))
    for family, scaling in cases.items():
        hf_model = _random_hf(HF_CONFIGS[family](rope_scaling=dict(scaling)))
        hf_model.save_pretrained(tmp_path / f"{family}-hf")
        ref = _hf_logits(hf_model, ids)
        hf_to_llmx(tmp_path / f"{family}-hf", tmp_path / family)
        saved = json.loads((tmp_path / f"{family}-hf" / "config.json").read_text())["rope_scaling"]
        kept = json.loads((tmp_path / family / "config.json").read_text())["rope_scaling"]
        assert kept == saved and scaling.items() <= saved.items(), family
        assert _relative(_llmx_logits(_llmx_model(family, tmp_path / family), ids), ref) < TOLERANCE, family
        llmx_to_hf(tmp_path / family, tmp_path / f"{family}-back")
        back = json.loads((tmp_path / f"{family}-back" / "config.json").read_text())["rope_scaling"]
        assert back == kept, family
        exported = _hf_load(tmp_path / f"{family}-back")
        assert _relative(_hf_logits(exported, ids), ref) < TOLERANCE, family
