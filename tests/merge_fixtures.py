"""Small fake checkpoints for merge tests, written without paddle: a config.json, a tokenizer file and
model.safetensors with LLaMA-like tensor names and random values."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NAMES = {
    "llama.embed_tokens.weight": (16, 8),
    "llama.layers.0.self_attn.q_proj.weight": (8, 8),
    "llama.layers.0.mlp.up_proj.weight": (8, 12),
    "llama.layers.0.input_layernorm.weight": (8,),
    "llama.layers.1.self_attn.q_proj.weight": (8, 8),
    "llama.layers.1.mlp.up_proj.weight": (8, 12),
    "llama.layers.1.input_layernorm.weight": (8,),
    "llama.norm.weight": (8,),
    "lm_head.weight": (8, 16),
}


def write_model(path: Path, tensors: dict, config: dict | None = None, tokenizer: str = "vocab-1") -> Path:
    from llmx.merge.safetensors_io import Writer

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 16,
           "model_type": "llama", "dtype": "float32", **(config or {})}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer.json").write_text(tokenizer)
    w = Writer(path / "model.safetensors", [(n, "float32", t.shape) for n, t in tensors.items()])
    for n, t in tensors.items():
        w.write(n, t)
    w.close()
    return path


def random_model(path: Path, seed: int, scale: float = 1.0, names: dict = NAMES, base: dict | None = None, **kw) -> dict:
    rng = np.random.default_rng(seed)
    tensors = {n: ((base[n] if base else 0) + scale * rng.standard_normal(s)).astype(np.float32) for n, s in names.items()}
    write_model(path, tensors, **kw)
    return tensors
