"""`stage=convert stage.direction=to_gguf` refuses, in one line and before paddle is imported, what a GGUF
export cannot hold: families outside llama.cpp's and transformers' GGUF conventions, rotary scaling, a
tokenizer that is neither byte-level BPE nor SentencePiece, and an unknown file type."""
import json
import shutil

import pytest
from helpers import config_error, input_error

from llmx.schema import CONF_DIR

TINY_TOKENIZER = CONF_DIR.parent / "llmx" / "assets" / "tiny_tokenizer"
EXPORT = ["stage=convert", "stage.direction=to_gguf"]


def _model_dir(tmp_path, config: dict, tokenizer: bool = True):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if tokenizer:
        for f in TINY_TOKENIZER.iterdir():
            shutil.copy2(f, d / f.name)
    return d


def test_a_family_gguf_cannot_hold_is_refused_without_paddle(tmp_path):
    d = _model_dir(tmp_path, {"architectures": ["BloomForCausalLM"], "model_type": "bloom"})
    line = config_error(*EXPORT, f"model.name_or_path={d}", tmp_path=tmp_path)
    assert line == (f"llmx: config error: model.name_or_path='{d}': model family bloom has no GGUF export (llmx writes GGUF for "
                    "llama, mistral, qwen2, qwen3: the families whose files llama.cpp and transformers' GGUF "
                    "loader both read)")


def test_an_unknown_gguf_type_is_refused_without_paddle(tmp_path):
    d = _model_dir(tmp_path, {"architectures": ["LlamaForCausalLM"]})
    line = config_error(*EXPORT, f"model.name_or_path={d}", "stage.gguf_type=q3_k_s", tmp_path=tmp_path)
    assert "stage.gguf_type" in line and "q3_k_s" in line and "q4_k_m" in line


@pytest.mark.parametrize("config, tokenizer, message", [
    ({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"type": "linear", "factor": 2.0}}, True,
     "rope_scaling={'type': 'linear', 'factor': 2.0}: GGUF exports of rotary scaling are not written"),
    ({"architectures": ["LlamaForCausalLM"]}, False,
     "its tokenizer is neither a byte-level BPE tokenizer.json nor a SentencePiece model"),
])
def test_what_a_gguf_file_cannot_carry_is_refused(tmp_path, config, tokenizer, message):
    d = _model_dir(tmp_path, config, tokenizer)
    line = input_error(*EXPORT, f"model.name_or_path={d}", "model=llama")
    assert line.startswith(f"llmx: config error: model.name_or_path='{d}': ") and message in line, line


def test_dtype_belongs_to_the_other_directions(tmp_path):
    d = _model_dir(tmp_path, {"architectures": ["LlamaForCausalLM"]})
    line = input_error(*EXPORT, f"model.name_or_path={d}", "stage.dtype=float16")
    assert line.startswith("llmx: config error: stage.dtype='float16': is for from_hf/to_hf"), line
