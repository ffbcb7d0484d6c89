"""Hugging Face <-> llmx checkpoints, checked against transformers itself (torch CPU + transformers are
test dependencies). Tiny random HF models of every family transformers has are built and saved by
transformers, converted, and compared: logits, greedy generations, tensors of the round trips,
tokenizer ids. One module-scoped set of models serves every test; few launches."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, launch

from llmx.families import FAMILIES

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

TEXT = "Hello world! Grüße aus München. 你好，世界。 Привет, мир. مرحبا بالعالم. こんにちは 123 ok."
_C = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Each family with a transformers class: grouped-query attention, tied embeddings and biases where it has them.
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_C, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(**_C, num_key_value_heads=2),
    "mixtral": lambda: transformers.MixtralConfig(**_C, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": lambda: transformers.Qwen2Config(**_C, num_key_value_heads=2, tie_word_embeddings=True),
    "gemma": lambda: transformers.GemmaConfig(**_C, num_key_value_heads=1, head_dim=8),
    "bloom": lambda: transformers.BloomConfig(vocab_size=128, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1,
                                              eos_token_id=2, pad_token_id=0),
    "opt": lambda: transformers.OPTConfig(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                          num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64,
                                          bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "gpt3": lambda: transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                            bos_token_id=1, eos_token_id=2, pad_token_id=0),
    # MLA with a query bottleneck, a dense first layer, then 8 routed experts in 4 groups (2 chosen) and a shared one
    "deepseek_v3": lambda: transformers.DeepseekV3Config(**_C, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16,
                                                         qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                                                         n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                                                         moe_intermediate_size=16, n_group=4, topk_group=2,
                                                         first_k_dense_replace=1),
    # A window (4) shorter than the prompts (10 tokens); eager: transformers' sdpa attention drops soft-capping.
    "gemma2": lambda: transformers.Gemma2Config(**_C, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                query_pre_attn_scalar=6, attn_logit_softcapping=5.0,
                                                final_logit_softcapping=5.0, attn_implementation="eager"),
    "gemma3": lambda: transformers.Gemma3TextConfig(**_C, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                    sliding_window_pattern=2, query_pre_attn_scalar=6,
                                                    rope_local_base_freq=100.0,
                                                    rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(**_C, num_key_value_heads=2, moe_intermediate_size=16,
                                                     shared_expert_intermediate_size=48, num_experts=4,
                                                     num_experts_per_tok=2),
    # head_dim unlike hidden/heads, top-k renormalised, layer 1 dense, every layer within a 6-token window
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**_C, num_key_value_heads=2, head_dim=16, moe_intermediate_size=16,
                                                     num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                                                     mlp_only_layers=[1], use_sliding_window=True, sliding_window=6),
    # head_dim 16, not hidden / heads; the second layer attends within a 6-token window
    "qwen3": lambda: transformers.Qwen3Config(**_C, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                                              use_sliding_window=True, sliding_window=6, max_window_layers=1),
}
# Families whose checkpoints come with their own (remote) code, not transformers: round trip llmx -> HF -> llmx.
OWN_CODE = ("qwen", "baichuan", "chatglm2", "yuan", "baichuan2", "chatglm")
OWN_CODE_EMBEDDINGS = {"qwen": "transformer.wte.weight", "baichuan": "model.layers.0.self_attn.W_pack.weight",
                       "chatglm2": "transformer.embedding.word_embeddings.weight", "yuan": "model.embed_tokens.weight",
                       "baichuan2": "model.layers.0.self_attn.W_pack.weight", "chatglm": "transformer.word_embeddings.weight"}


def _tree_state(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*"))}


def _st(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """family -> (HF dir, the transformers model, input ids): random weights (biases too) saved by transformers."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {}
    for name, make in HF_CONFIGS.items():
        model = transformers.AutoModelForCausalLM.from_config(make()).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(root / name)
        out[name] = (root / name, model)
    return out


@pytest.fixture(scope="module")
def converted(hf_models, tmp_path_factory):
    from llmx.convert.hf import hf_to_llmx

    root = tmp_path_factory.mktemp("llmx")
    out = {}
    for name, (hf_dir, _) in hf_models.items():
        before = _tree_state(hf_dir)
        summary = hf_to_llmx(hf_dir, root / name)
        assert summary["family"] == name  # told by config.json alone
        assert _tree_state(hf_dir) == before, f"{name}: the source directory changed"
        out[name] = root / name
    return out


def _paddle_model(name: str, model_dir: Path):
    import paddle

    from llmx.engine.rope import scale_rotary_layers
    from llmx.families import FAMILIES, fixes

    fixes.apply(FAMILIES[name].fixes, fixes.BEFORE_BUILD)
    model = FAMILIES[name].load_class().from_pretrained(str(model_dir), dtype="float32")
    scale_rotary_layers(model, FAMILIES[name], model.config)  # a config.json rope_scaling, as build_model applies it
    model.eval()
    return model, paddle


def _logits(out):
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out if hasattr(out, "numpy") else out.logits


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_from_hf_logits_and_greedy_generation_equal_transformers(name, hf_models, converted):
    _, hf_model = hf_models[name]
    rng = np.random.RandomState(1)
    ids = rng.randint(3, 128, size=(2, 10))
    with torch.no_grad():
        ref = hf_model(torch.tensor(ids)).logits.numpy()
        hf_gen = hf_model.generate(torch.tensor(ids[:1]), attention_mask=torch.ones(1, 10, dtype=torch.long),
                                   max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                   pad_token_id=0)[0, 10:].tolist()
    model, paddle = _paddle_model(name, converted[name])
    with paddle.no_grad():
        ours = _logits(model(paddle.to_tensor(ids))).numpy()
        gen, _ = model.generate(input_ids=paddle.to_tensor(ids[:1]), attention_mask=paddle.ones([1, 10], "int64"),
                                max_new_tokens=16, min_new_tokens=16, decode_strategy="greedy_search",
                                eos_token_id=2, pad_token_id=0)
    assert np.abs(ours - ref).max() < 1e-4, f"{name}: logits differ by {np.abs(ours - ref).max()}"
    assert gen[0].numpy().tolist() == hf_gen, name


# Every family with a transformers class that llmx's inference engine runs: against transformers' generate.
ENGINE_FAMILIES = [name for name in HF_CONFIGS if not FAMILIES[name].no_engine]


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_engine_greedy_tokens_equal_transformers(name, hf_models, converted):
    """llmx's inference engine (llmx.infer: KV cache, prompts of different lengths left-padded in one batch,
    fewer rows than prompts) on the converted checkpoint: each prompt's 16 greedy tokens are what transformers'
    generate gives it alone. The prompts outrun the tiny sliding windows (Gemma 2/3: 4 tokens), and DeepSeek-V3's
    latent attention caches keys and values of different head sizes."""
    from helpers import compose

    from llmx.engine.model import build_tokenizer
    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    _, hf_model = hf_models[name]
    rng = np.random.RandomState(2)
    prompts = [rng.randint(3, 128, size=n).tolist() for n in (10, 3, 11, 6, 1)]
    expected = []
    for p in prompts:  # up to 16 tokens, ending before eos (2) as the engine's answers do
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    max_new_tokens=16, do_sample=False, eos_token_id=2, pad_token_id=0)[0, len(p):]
        out = out.tolist()
        expected.append(out[:out.index(2)] if 2 in out else out)
    model, _ = _paddle_model(name, converted[name])
    tokenizer = build_tokenizer(compose().model)  # (ids only; its eos is the models' 2)
    engine = dynamic_engine(model, tokenizer, max_batch=3)
    got = [r.tokens for r in engine.generate(prompts, SamplingParams(max_new_tokens=16))]
    assert got == expected, name
    assert sum(map(len, got)) > 2 * 16, name  # (not all ending at once)


def test_round_trips_hf_llmx_hf_and_llmx_hf_llmx_keep_every_tensor(hf_models, converted, tmp_path):
    from llmx.convert.hf import hf_to_llmx, llmx_to_hf

    for name, (hf_dir, hf_model) in hf_models.items():
        back = tmp_path / f"{name}-hf"
        llmx_to_hf(converted[name], back)
        original, returned = _st(hf_dir / "model.safetensors"), _st(back / "model.safetensors")
        assert sorted(returned) == sorted(original), name
        assert all(np.array_equal(original[k], returned[k]) for k in original), name
        config = json.loads((back / "config.json").read_text())
        assert config["model_type"] == hf_model.config.model_type and "paddlenlp_version" not in config
        # transformers loads it, with the same outputs
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(
            back, attn_implementation=hf_model.config._attn_implementation).eval()
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        with torch.no_grad():
            assert (reloaded(ids).logits - hf_model(ids).logits).abs().max() < 1e-6, name
        again = tmp_path / f"{name}-llmx"
        hf_to_llmx(back, again)  # llmx -> HF -> llmx is the identity
        first, second = _st(converted[name] / "model.safetensors"), _st(again / "model.safetensors")
        assert sorted(first) == sorted(second) and all(np.array_equal(first[k], second[k]) for k in first), name


def test_families_without_transformers_classes_round_trip_through_hf_names(tmp_path):
    """qwen, baichuan(2), chatglm2, yuan ship their own modeling code with their checkpoints: llmx writes their
    HF names and config (model_type, architecture) and reads them back to the same tensors."""
    from helpers import compose

    from llmx.convert.hf import hf_to_llmx, llmx_to_hf
    from llmx.engine import model as models

    for name in OWN_CODE:
        cfg = compose(f"model={name}")
        models.build_model(cfg.model, None, 1).save_pretrained(str(tmp_path / name), safe_serialization=True)
        llmx_to_hf(tmp_path / name, tmp_path / f"{name}-hf", name)  # (a Baichuan model dir names LlamaForCausalLM)
        hf_names = _st(tmp_path / f"{name}-hf" / "model.safetensors")
        summary = hf_to_llmx(tmp_path / f"{name}-hf", tmp_path / f"{name}-back")
        assert summary["family"] == name, "config.json alone tells the family"
        a, b = _st(tmp_path / name / "model.safetensors"), _st(tmp_path / f"{name}-back" / "model.safetensors")
        assert set(b) <= set(a) and all(np.array_equal(a[k], b[k]) for k in b), name
        assert not set(a) - set(b) - {"lm_head.weight"}, name  # (a tied head: the embedding's second name)
        assert OWN_CODE_EMBEDDINGS[name] in hf_names, f"{name}: {sorted(hf_names)[:3]}"
        if name == "chatglm":  # llmx writes this map (PaddleNLP has none): every name and shape of THUDM/chatglm-6b's
            assert {k: v.shape for k, v in hf_names.items()} == _chatglm_6b_tensors(cfg.model.sizes.tiny)


def _chatglm_6b_tensors(size) -> dict:
    """THUDM/chatglm-6b's checkpoint tensors (modeling_chatglm.py; torch Linear weights are [out, in]; the tied
    lm_head is not saved under its own name by transformers' safetensors)."""
    h, ff, V = size.hidden_size, size.inner_hidden_size, size.vocab_size
    out = {"transformer.word_embeddings.weight": (V, h), "transformer.final_layernorm.weight": (h,),
           "transformer.final_layernorm.bias": (h,)}
    for i in range(size.num_hidden_layers):
        for name, (rows, cols) in {"attention.query_key_value": (3 * h, h), "attention.dense": (h, h),
                                   "mlp.dense_h_to_4h": (ff, h), "mlp.dense_4h_to_h": (h, ff)}.items():
            out[f"transformer.layers.{i}.{name}.weight"] = (rows, cols)
            out[f"transformer.layers.{i}.{name}.bias"] = (rows,)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out.update({f"transformer.layers.{i}.{norm}.{p}": (h,) for p in ("weight", "bias")})
    return out


def test_sharded_pytorch_bin_converts_like_safetensors(hf_models, converted, tmp_path):
    from llmx.convert.hf import hf_to_llmx

    hf_dir, model = hf_models["qwen2"]
    model.save_pretrained(tmp_path / "bin", safe_serialization=False, max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "bin").glob("pytorch_model-*.bin"))
    assert len(shards) > 1 and (tmp_path / "bin" / "pytorch_model.bin.index.json").is_file()
    hf_to_llmx(tmp_path / "bin", tmp_path / "out")
    a, b = _st(converted["qwen2"] / "model.safetensors"), _st(tmp_path / "out" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- tokenizers
def _fast_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT, "the quick brown fox jumps over the lazy dog"] * 20,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")


def test_tokenizers_encode_to_the_same_ids_both_ways(hf_models, tmp_path):
    """A SentencePiece tokenizer.model and a fast tokenizer.json, each with a chat template."""
    from paddlenlp.transformers import AutoTokenizer

    from llmx.schema import asset_path
    from llmx.convert.hf import hf_to_llmx, llmx_to_hf

    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    chat = [{"role": "user", "content": "Grüße, 你好"}]
    sp = transformers.LlamaTokenizer(vocab_file=asset_path("tiny_tokenizer/sentencepiece.bpe.model"), legacy=True)
    for kind, tok in (("sentencepiece", sp), ("fast", _fast_tokenizer())):
        tok.chat_template = template
        hf_dir = tmp_path / kind
        shutil.copytree(hf_models["llama"][0], hf_dir)
        tok.save_pretrained(hf_dir)
        ref = tok(TEXT)["input_ids"]
        hf_to_llmx(hf_dir, tmp_path / f"{kind}-llmx")
        ours = AutoTokenizer.from_pretrained(str(tmp_path / f"{kind}-llmx"))
        assert ours(TEXT)["input_ids"] == ref, kind
        assert ours.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
        llmx_to_hf(tmp_path / f"{kind}-llmx", tmp_path / f"{kind}-hf")
        back = transformers.AutoTokenizer.from_pretrained(tmp_path / f"{kind}-hf", use_fast=kind == "fast")
        assert back(TEXT)["input_ids"] == ref and back.chat_template == template, kind


# ----------------------------------------------------------------------------- bad checkpoints
def _rewrite(src: Path, dst: Path, change) -> None:
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    state = _st(src / "model.safetensors")
    change(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_bad_checkpoints_fail_with_one_line_naming_tensor_and_shapes(hf_models, tmp_path):
    from llmx.convert.hf import hf_to_llmx
    from llmx.convert.tensors import CheckpointError

    src = hf_models["llama"][0]
    cases = {
        "missing": (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"),
                    "missing tensor model.layers.1.mlp.up_proj.weight (the model's llama.layers.1.mlp.up_proj.weight [32, 64])"),
        "extra": (lambda s: s.update({"model.layers.1.mlp.extra.weight": np.zeros((3, 4), np.float32)}),
                  "unexpected tensor model.layers.1.mlp.extra.weight [3, 4]"),
        "shape": (lambda s: s.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)}),
                  "tensor model.layers.0.self_attn.k_proj.weight has shape [32, 32], the model's "
                  "llama.layers.0.self_attn.k_proj.weight needs [16, 32]"),
    }
    for case, (change, expected) in cases.items():
        bad = tmp_path / case
        _rewrite(src, bad, change)
        with pytest.raises(CheckpointError) as err:
            hf_to_llmx(bad, tmp_path / f"{case}-out")
        message = str(err.value)
        assert expected in message and "\n" not in message, message
        assert not (tmp_path / f"{case}-out").exists(), "nothing is left behind"


def test_gpt2_files_of_the_base_model_convert_alike_and_what_gpt3_cannot_compute_is_refused(hf_models, converted,
                                                                                              tmp_path):
    """The original GPT-2 files hold GPT2Model's tensors (no `transformer.` prefix) and its causal-mask buffers;
    GPT-2 settings PaddleNLP's GPT cannot compute stop in one line."""
    from llmx.convert.hf import hf_to_llmx
    from llmx.errors import ConfigError

    def as_base_model(state):
        for name in list(state):
            state[name[len("transformer."):]] = state.pop(name)
        for n in range(2):
            state[f"h.{n}.attn.bias"] = np.tril(np.ones((64, 64), np.uint8))[None, None]
            state[f"h.{n}.attn.masked_bias"] = np.array(-1e4, np.float32)

    _rewrite(hf_models["gpt3"][0], tmp_path / "base", as_base_model)
    hf_to_llmx(tmp_path / "base", tmp_path / "base-llmx")
    a, b = _st(converted["gpt3"] / "model.safetensors"), _st(tmp_path / "base-llmx" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    refused = {"activation_function": "gelu", "layer_norm_epsilon": 1e-6, "scale_attn_weights": False,
               "scale_attn_by_inverse_layer_idx": True, "tie_word_embeddings": False}
    for key, value in refused.items():
        bad = tmp_path / key
        shutil.copytree(hf_models["gpt3"][0], bad)
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ConfigError) as err:
            hf_to_llmx(bad, tmp_path / f"{key}-out")
        assert key in str(err.value) and "\n" not in str(err.value) and "gpt3" in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- stages, cache, LoRA export
def _run_stage(run_dir: Path, *overrides: str) -> dict:
    """What launch.py does with a config, in this process: validate, prepare, run."""
    from helpers import compose

    from llmx.engine.context import create_context
    from llmx.stages import stage_module, validate

    cfg = compose(*overrides)
    validate(cfg)
    stage = stage_module(cfg.stage.runner)
    summary = stage.run(cfg, create_context(cfg, str(run_dir), stage.prepare(cfg)))
    assert summary["stage"] == "convert"
    return summary


def test_hf_dir_trains_through_the_cache_and_a_lora_run_exports_to_transformers(tmp_path):
    """An HF dir given to stage=lora is converted once into the cache; stage=convert from_hf reuses it;
    the LoRA run exported with to_hf loads in transformers with llmx's logits (adapter merged)."""
    from llmx.schema import asset_path

    torch.manual_seed(0)
    hf_dir = tmp_path / "hf-llama"
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_C, "vocab_size": 512, "pad_token_id": 3},
                                                                   num_key_value_heads=2))
    model.save_pretrained(hf_dir, safe_serialization=False)  # a pytorch_model.bin checkpoint
    transformers.LlamaTokenizer(vocab_file=asset_path("tiny_tokenizer/sentencepiece.bpe.model"), legacy=True,
                                pad_token="<pad>").save_pretrained(hf_dir)
    before = _tree_state(hf_dir)
    env = dict(os.environ, LLMX_CACHE=str(tmp_path / "cache"))
    run = tmp_path / "lora"
    proc = launch("model=llama", f"model.name_or_path={hf_dir}", "stage=lora", "stage.train.max_steps=4",
                  "stage.train.lr=1e-2", "stage.eval.enabled=false", f"hydra.run.dir={run}", *FAST, env=env)
    assert f"converting the Hugging Face checkpoint {hf_dir} (once" in proc.stdout + proc.stderr
    caches = [p for p in (tmp_path / "cache" / "hf").iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "llmx_converted.json").is_file()

    marker = (caches[0] / "llmx_converted.json").stat().st_mtime_ns
    os.environ["LLMX_CACHE"] = env["LLMX_CACHE"]
    try:  # both directions of stage=convert, in this process (as launch.py runs a stage)
        out = tmp_path / "llmx-model"
        summary = _run_stage(tmp_path / "from", "stage=convert", f"model.name_or_path={hf_dir}",
                             f"stage.output_dir={out}")
        exported = tmp_path / "lora-hf"
        to_hf = _run_stage(tmp_path / "to", "stage=convert", "stage.direction=to_hf", f"model.name_or_path={run}",
                           f"stage.output_dir={exported}")
    finally:
        del os.environ["LLMX_CACHE"]
    # what the conversions leave: no empty folder (no checkpoints/), and closing lines naming what they wrote
    from helpers import empty_folders

    from llmx.console import summary_lines

    assert empty_folders(tmp_path / "from") == empty_folders(tmp_path / "to") == []
    assert summary_lines(to_hf, tmp_path / "to", 0)[-2:] == [f"  model_dir  {exported}",
                                                             f"run dir: {tmp_path / 'to'}  (merged_model/)"]
    assert summary["cache_dir"] == str(caches[0]) and (caches[0] / "llmx_converted.json").stat().st_mtime_ns == marker
    assert len([p for p in (tmp_path / "cache" / "hf").iterdir() if p.is_dir()]) == 1  # reused, not converted again
    assert _st(out / "model.safetensors").keys() == _st(caches[0] / "model.safetensors").keys()
    assert _tree_state(hf_dir) == before, "the source directory changed"

    import paddle
    from paddlenlp.peft import LoRAModel
    from paddlenlp.transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(caches[0]), dtype="float32")
    llmx_model = LoRAModel.from_pretrained(base, str(run / "adapter"))
    llmx_model.eval()
    ids = np.array([[1, 40, 41, 42, 43, 44, 45]])
    with paddle.no_grad():
        ours = _logits(llmx_model(paddle.to_tensor(ids))).numpy()
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
        original = model(torch.tensor(ids)).logits.numpy()
    assert np.abs(theirs - ours).max() < 1e-4
    assert np.abs(theirs - original).max() > 1e-3, "the adapter changed the model"
    tok = transformers.AutoTokenizer.from_pretrained(exported, use_fast=False)
    assert tok(TEXT)["input_ids"] == transformers.AutoTokenizer.from_pretrained(hf_dir, use_fast=False)(TEXT)["input_ids"]


def test_safetensors_written_by_stream_are_valid_files(converted):
    """The streaming writer's files are ordinary safetensors (8-byte aligned header, offsets in order)."""
    path = converted["llama"] / "model.safetensors"
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    assert (8 + size) % 8 == 0 and header["__metadata__"] == {"format": "np"}
    ends = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:])) and ends[-1][1] == len(raw) - 8 - size


def test_paddlenlp_pdparams_dir_exports_to_hf(hf_models, converted, tmp_path):
    """A PaddleNLP directory holding model_state.pdparams (what its convert_from_torch and save_pretrained
    write by default) goes back to HF too."""
    from llmx.convert.hf import llmx_to_hf

    model, _ = _paddle_model("qwen2", converted["qwen2"])
    model.save_pretrained(str(tmp_path / "pd"))
    assert (tmp_path / "pd" / "model_state.pdparams").is_file()
    llmx_to_hf(tmp_path / "pd", tmp_path / "hf")
    a, b = _st(hf_models["qwen2"][0] / "model.safetensors"), _st(tmp_path / "hf" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_llmx_models_export_to_transformers_with_the_same_logits(tmp_path):
    """Models made by llmx (random init at `tiny`, PaddleNLP's config defaults, llmx's fixes) load in
    transformers from their to_hf export and compute the same logits."""
    from helpers import compose

    from llmx.convert.hf import llmx_to_hf
    from llmx.engine import model as models

    import paddle

    ids = np.array([[1, 40, 41, 42, 43, 44, 45, 46]])
    for name in HF_CONFIGS:
        model = models.build_model(compose(f"model={name}").model, None, 1)
        model.eval()
        model.save_pretrained(str(tmp_path / name), safe_serialization=True)
        llmx_to_hf(tmp_path / name, tmp_path / f"{name}-hf")
        with paddle.no_grad():
            ours = _logits(model(paddle.to_tensor(ids))).numpy()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"{name}-hf",
                                                                   attn_implementation="eager").eval()
        with torch.no_grad():
            diff = np.abs(theirs(torch.tensor(ids)).logits.numpy() - ours).max()
        assert diff < 1e-4, f"{name}: {diff}"
