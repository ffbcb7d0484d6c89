"""Conversion's paddle-free parts: streaming safetensors I/O, family detection from config.json,
HF-checkpoint detection and content keys, tokenizer files, and stage=convert's config errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import config_error, input_error

from llmx.convert.cache import content_digest, is_hf_checkpoint
from llmx.convert.tensors import CheckpointError, StreamWriter, TensorIndex
from llmx.convert.tokenizer import tokenizer_from_hf, tokenizer_to_hf
from llmx.families import family_of_hf_config, family_of_paddle_config


def _write(path, tensors: dict, metadata=None):
    writer = StreamWriter(path, {k: (code, v.shape) for k, (code, v) in tensors.items()}, metadata)
    for name, (_, array) in tensors.items():
        writer.write(name, array)
    writer.close()


def test_stream_writer_files_read_back_exactly_bfloat16_included(tmp_path):
    from safetensors import safe_open

    rng = np.random.RandomState(0)
    a = rng.randn(3, 5).astype(np.float32)
    bf16 = rng.randint(0, 2 ** 16, size=(4, 2)).astype(np.uint16)  # raw bfloat16 words
    _write(tmp_path / "m.safetensors", {"a": ("F32", a.T), "b": ("BF16", bf16)}, {"format": "pt"})
    with safe_open(str(tmp_path / "m.safetensors"), framework="np") as f:  # the reference reader agrees
        assert np.array_equal(f.get_tensor("a"), a.T)  # (its numpy side refuses bfloat16: why llmx reads itself)
    index = TensorIndex(tmp_path)
    assert index.infos["b"].dtype == "BF16" and index.infos["b"].shape == (4, 2)
    assert np.array_equal(index.get("a"), a.T) and np.array_equal(index.get("b"), bf16)
    assert index.largest == 60 and index.total_bytes == 76


def test_stream_writer_refuses_what_was_not_planned(tmp_path):
    writer = StreamWriter(tmp_path / "m.safetensors", {"a": ("F32", (2,)), "b": ("F32", (3,))})
    with pytest.raises(RuntimeError, match="b written where a was planned"):
        writer.write("b", np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match=r"a is float64\[2\], planned F32\[2\]"):
        writer.write("a", np.zeros(2, np.float64))


def test_a_directory_without_weights_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"no model.safetensors, \*.safetensors, pytorch_model\*.bin or "
                                              r"model_state.pdparams"):
        TensorIndex(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="names shard gone.safetensors"):
        TensorIndex(tmp_path)


@pytest.mark.parametrize("config, family", [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "llama"),
    ({"model_type": "qwen2"}, "qwen2"), ({"model_type": "mixtral"}, "mixtral"), ({"model_type": "gemma"}, "gemma"),
    ({"model_type": "opt"}, "opt"), ({"model_type": "bloom"}, "bloom"), ({"model_type": "baichuan"}, "baichuan"),
    ({"model_type": "chatglm", "multi_query_group_num": 2}, "chatglm2"),
    ({"model_type": "chatglm", "inner_hidden_size": 16384}, "chatglm"), ({"model_type": "bert"}, None),
])
def test_family_of_hf_config(config, family):
    assert family_of_hf_config(config) == family


def test_family_of_paddle_config():
    assert family_of_paddle_config({"architectures": ["Qwen2ForCausalLMPipe"]}) == "qwen2"
    assert family_of_paddle_config({"architectures": ["LlamaForCausalLM"]}) == "llama"
    assert family_of_paddle_config({"architectures": ["BertModel"]}) is None


def test_hf_checkpoints_are_told_from_paddle_ones_and_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMX_CACHE", str(tmp_path / "cache"))
    hf, pd = tmp_path / "hf", tmp_path / "pd"
    for d, fmt, extra in ((hf, "pt", {}), (pd, "np", {"paddlenlp_version": "3.0.0b4"})):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama", **extra}))
        _write(d / "model.safetensors", {"w": ("F32", np.ones((2, 2), np.float32))}, {"format": fmt})
    assert is_hf_checkpoint(hf) and not is_hf_checkpoint(pd)
    first = content_digest(hf)
    assert content_digest(hf) == first  # (the second time from the remembered file digests)
    _write(hf / "model.safetensors", {"w": ("F32", np.zeros((2, 2), np.float32))}, {"format": "pt"})
    assert content_digest(hf) != first


def test_tokenizer_files_both_ways(tmp_path):
    hf, pd, back = tmp_path / "hf", tmp_path / "pd", tmp_path / "back"
    for d in (hf, pd, back):
        d.mkdir()
    (hf / "tokenizer.model").write_bytes(b"sp")
    (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    (hf / "chat_template.jinja").write_text("{{ messages }}")
    assert tokenizer_from_hf(hf, pd, "LlamaTokenizer") == "LlamaTokenizer"
    assert (pd / "sentencepiece.bpe.model").read_bytes() == b"sp"
    assert json.loads((pd / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"
    assert tokenizer_to_hf(pd, back) == "LlamaTokenizer" and (back / "tokenizer.model").read_bytes() == b"sp"
    (hf / "tokenizer.json").write_text("{}")
    assert tokenizer_from_hf(hf, pd, "LlamaTokenizer") == "PretrainedTokenizerFast"
    assert tokenizer_to_hf(pd, back) == "PreTrainedTokenizerFast"


def test_convert_stage_config_errors(tmp_path):
    assert input_error("stage=convert") == ("llmx: config error: model.name_or_path=None: needs the directory to "
                                            "convert (an HF checkpoint dir for from_hf, an llmx model or run dir for to_hf)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    assert "stage.direction='back': allowed: from_hf, to_hf" in input_error(
        "stage=convert", f"model.name_or_path={src}", "stage.direction=back")
    assert "the source is never written" in input_error(
        "stage=convert", f"model.name_or_path={src}", f"stage.output_dir={src / 'out'}")
    assert "is not a Hugging Face checkpoint" in input_error("stage=convert", f"model.name_or_path={src}")


def test_convert_family_mismatch_exits_2_before_paddle(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "mistral", "num_hidden_layers": 2,
                                                "num_attention_heads": 4, "vocab_size": 32}))
    _write(hf / "model.safetensors", {"w": ("F32", np.ones(2, np.float32))}, {"format": "pt"})
    line = config_error("stage=convert", "model=qwen2", f"model.name_or_path={hf}", tmp_path=tmp_path)
    # found while composing (llmx.model_choice): the family named by model= against the checkpoint's
    assert line == f"llmx: config error: model=qwen2 (model.family=qwen2): {hf} holds a mistral model; " \
                   "leave model= out to follow the checkpoint, or use model=mistral"


def test_named_chat_templates_survive_conversion_loading_and_saving(tmp_path):
    """PaddleNLP refuses a list of named templates in tokenizer_config.json; llmx keeps the list beside it (and the
    default inside), renders from the list, saves it with the tokenizer, and writes it back for transformers."""
    from paddlenlp.transformers import AutoTokenizer

    from llmx.schema import asset_path
    from llmx.convert.tokenizer import NAMED_TEMPLATES, chat_template_in, save_tokenizer

    hf, pd, saved, back = (tmp_path / n for n in ("hf", "pd", "saved", "back"))
    for d in (pd, back):
        d.mkdir()
    shutil.copytree(asset_path("tiny_tokenizer"), hf)
    named = [{"name": "default", "template": "D{{ messages[0].content }}"}, {"name": "tool_use", "template": "T"}]
    config = json.loads((hf / "tokenizer_config.json").read_text())
    (hf / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": named}))
    shutil.copy(hf / "sentencepiece.bpe.model", hf / "tokenizer.model")
    tokenizer_from_hf(hf, pd, "LlamaTokenizer")
    assert json.loads((pd / "tokenizer_config.json").read_text())["chat_template"] == "D{{ messages[0].content }}"
    tokenizer = AutoTokenizer.from_pretrained(str(pd))  # loads: the list is not where PaddleNLP reads
    tokenizer.llmx_chat_template = chat_template_in(pd)
    assert tokenizer.llmx_chat_template == named
    save_tokenizer(tokenizer, saved)
    assert json.loads((saved / NAMED_TEMPLATES).read_text()) == named
    tokenizer_to_hf(saved, back)
    assert json.loads((back / "tokenizer_config.json").read_text())["chat_template"] == named
