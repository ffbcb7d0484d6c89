"""Validation and `plan` describe a Hugging Face checkpoint directory or a GGUF file without converting it:
no paddle, no paddlenlp, nothing written to the conversion cache, and the plan's parameter count is what the
checkpoint's config implies (the number of weights it holds)."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import REPO

pytest.importorskip("gguf", reason="gguf is a dependency of llmx: pip install -e .")

# A tiny Llama as transformers' LlamaConfig saves it (vocab 300: gguf_files' byte-level vocabulary).
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 64,
          "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 300,
          "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}

VALIDATE_AND_PLAN = """
import json, sys
from llmx.plan import compose_config, estimate
from llmx.stages import validate
cfg = compose_config([f"model.name_or_path={sys.argv[1]}", "stage=sft"])
validate(cfg)
plan = estimate(cfg)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "paddlenlp"))
print(json.dumps({"family": cfg.model.family, "parameters": plan["model"]["parameters"], "heavy": heavy}))
"""


def _state(config: dict) -> dict:
    """Random weights of the shapes transformers' LlamaForCausalLM has for `config` (float32)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    rng = np.random.RandomState(0)
    state = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        state.update({f"model.layers.{n}.{k}": s for k, s in {
            "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
            "self_attn.o_proj.weight": (h, h), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
            "mlp.down_proj.weight": (h, i)}.items()})
    return {k: rng.standard_normal(s).astype(np.float32) * 0.02 for k, s in state.items()}


def _hf_dir(path, state):
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})  # "pt": saved by transformers
    return path


def _gguf(path, state):
    from gguf_files import write_llama_gguf

    return write_llama_gguf(path, state, SimpleNamespace(**CONFIG))


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_validate_and_plan_import_no_paddle(tmp_path, kind):
    state = _state(CONFIG)
    path = (_hf_dir if kind == "hf" else _gguf)(tmp_path / ("hf" if kind == "hf" else "tiny.gguf"), state)
    cache = tmp_path / "cache"
    env = {**__import__("os").environ, "LLMX_CACHE": str(cache), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    out = subprocess.run([sys.executable, "-c", VALIDATE_AND_PLAN, str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["family"] == "llama"
    assert result["parameters"] == sum(a.size for a in state.values())  # every weight the checkpoint holds
    converted = [p for p in (cache / "hf").iterdir() if p.is_dir()] if (cache / "hf").is_dir() else []
    assert converted == [], "validation converted the checkpoint"
