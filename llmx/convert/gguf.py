"""GGUF files (llama.cpp's single-file checkpoints) as Hugging Face checkpoint directories.

A GGUF file holds quantized tensors under llama.cpp's names, the model's hyperparameters as
`<architecture>.*` metadata and the tokenizer as `tokenizer.ggml.*` arrays. `gguf_to_hf` rebuilds
what transformers would have saved for the same model (config.json, float32 safetensors under
Hugging Face names, tokenizer.json + tokenizer_config.json); `gguf_to_llmx` then hands that
directory to the ordinary HF -> llmx conversion (llmx.convert.hf), so both kinds of checkpoint share
one path from there on. Reading and dequantizing use the `gguf` package's numpy code only.

`check` reads the metadata alone and refuses, in one line, what this module cannot rebuild
faithfully: other architectures, SentencePiece ("llama") vocabularies, rotary scaling, mixtures of
experts. The messages leave out the file: callers prefix the key and path.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from llmx.convert.tensors import CheckpointError

SUPPORTED_ARCHITECTURES = ("llama",)
# llama.cpp's token types (gguf.TokenType): which entries of the vocabulary are added tokens.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) whose split is GPT-2's regex, and those that first
# cut every digit apart (StarCoder-style vocabularies such as SmolLM's); no other regex is rebuilt here.
_GPT2_PRE = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion")
_DIGIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
# llama.cpp tensor name (per block: after `blk.N.`) -> Hugging Face Llama name (after `model.layers.N.`).
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def _reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:  # (a truncated or foreign file fails while parsing)
        raise CheckpointError(f"not a readable GGUF file ({type(e).__name__}: {e})") from None


def _metadata(reader) -> dict:
    """Every metadata field as a Python value (strings decoded, arrays as lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def read_metadata(path) -> dict:
    return _metadata(_reader(Path(path)))


def read_hf_config(path) -> dict:
    """The config.json gguf_to_hf would write for GGUF file `path`, from its metadata and tensor names alone
    (paddle-free; refused first, as check() refuses)."""
    reader = _reader(Path(path))
    meta = _metadata(reader)
    check(meta)
    return hf_config(meta, tied=not any(t.name == "output.weight" for t in reader.tensors))


def architecture(meta: dict) -> str:
    return str(meta.get("general.architecture"))


def check(meta: dict) -> None:
    """Refuse what gguf_to_hf cannot rebuild faithfully (one line, without the file name)."""
    arch = architecture(meta)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"general.architecture={arch!r}: llmx converts GGUF files of architecture "
                              f"{', '.join(SUPPORTED_ARCHITECTURES)} only")
    if meta.get("llama.expert_count"):
        raise CheckpointError(f"llama.expert_count={meta['llama.expert_count']}: a mixture of experts; llmx converts "
                              "dense llama GGUF files only")
    scaling = meta.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise CheckpointError(f"llama.rope.scaling.type={scaling!r}: llmx converts GGUF files without rotary scaling "
                              "only (convert the Hugging Face checkpoint directory instead)")
    head_dim = meta.get("llama.attention.key_length")
    hidden, heads = meta.get("llama.embedding_length"), meta.get("llama.attention.head_count")
    if head_dim and hidden and heads and head_dim * heads != hidden:
        raise CheckpointError(f"llama.attention.key_length={head_dim}: PaddleNLP's Llama needs head size "
                              f"embedding_length/head_count = {hidden // heads}")
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        what = "a SentencePiece vocabulary, which llmx does not rebuild from GGUF" if model == "llama" else "unknown"
        raise CheckpointError(f"tokenizer.ggml.model={model!r}: {what}; llmx reads byte-level BPE ('gpt2') GGUF "
                              "tokenizers only (convert the Hugging Face checkpoint directory instead)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _GPT2_PRE + _DIGIT_PRE:
        raise CheckpointError(f"tokenizer.ggml.pre={pre!r}: llmx rebuilds the pre-tokenizers "
                              f"{', '.join(_GPT2_PRE + _DIGIT_PRE)} only")
    if not meta.get("tokenizer.ggml.merges"):
        raise CheckpointError("tokenizer.ggml.merges: missing (a byte-level BPE vocabulary needs its merges)")


# ----------------------------------------------------------------------------- config
def hf_config(meta: dict, tied: bool) -> dict:
    """transformers' LlamaConfig as config.json, from the `llama.*` metadata."""
    def need(key):
        if key not in meta:
            raise CheckpointError(f"{key}: missing from the GGUF metadata")
        return meta[key]

    heads = int(need("llama.attention.head_count"))
    vocab = meta.get("llama.vocab_size") or len(need("tokenizer.ggml.tokens"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": int(need("llama.embedding_length")),
        "intermediate_size": int(need("llama.feed_forward_length")),
        "num_hidden_layers": int(need("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv") or heads),
        "max_position_embeddings": int(need("llama.context_length")),
        "rms_norm_eps": float(need("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),  # llama.cpp's default when absent
        "vocab_size": int(vocab),
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    config.update(_special_ids(meta))
    return config


def _special_ids(meta: dict) -> dict:
    out = {}
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("pad_token_id", "padding_token_id")):
        value = meta.get(f"tokenizer.ggml.{theirs}")
        if value is not None:
            out[ours] = int(value)
    return out


# ----------------------------------------------------------------------------- tokenizer
def tokenizer_json(meta: dict) -> str:
    """The byte-level BPE vocabulary as a `tokenizers` tokenizer.json: the vocabulary in id order, the merges
    in rank order, llama.cpp's control tokens as special added tokens (never split, kept out of BPE)."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre", "default") in _DIGIT_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # Added tokens keep their vocabulary ids: each is already in the BPE vocabulary under its own text.
    tok.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                            for i, t in enumerate(types) if t in (_CONTROL, _UNKNOWN)])
    tok.add_tokens([AddedToken(tokens[i], normalized=False, special=False)
                    for i, t in enumerate(types) if t == _USER_DEFINED])
    ids = _special_ids(meta)
    first = [tokens[ids["bos_token_id"]]] if meta.get("tokenizer.ggml.add_bos_token") and "bos_token_id" in ids else []
    last = [tokens[ids["eos_token_id"]]] if meta.get("tokenizer.ggml.add_eos_token") and "eos_token_id" in ids else []
    if first or last:  # what llama.cpp adds around every encoded text, as the file asks
        tok.post_processor = processors.TemplateProcessing(
            single=first + ["$A"] + last, pair=first + ["$A"] + last + first + ["$B"] + last,
            special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys(first + last)])
    return tok.to_str()


def tokenizer_config(meta: dict, config: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
           "model_max_length": config["max_position_embeddings"]}
    ids = _special_ids(meta)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    if unk is not None:
        ids["unk_token_id"] = int(unk)
    for name, i in ids.items():
        if not 0 <= i < len(tokens):
            raise CheckpointError(f"tokenizer.ggml.{name}={i}: outside the vocabulary of {len(tokens)} tokens")
        out[name.replace("_id", "")] = tokens[i]
    if isinstance(meta.get("tokenizer.chat_template"), str):
        out["chat_template"] = meta["tokenizer.chat_template"]
    return out


# ----------------------------------------------------------------------------- tensors
def _hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
    raise CheckpointError(f"tensor {name}: not part of a llama model as llmx converts it (no Hugging Face name)")


def _unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows. Hugging Face's rotary pairs row r with row r + d/2 inside each
    head (d rows per head); llama.cpp stores each such pair next to each other (rows 2j, 2j+1) for its
    interleaved rotary. Viewing the head's rows as [j, pair] and swapping to [pair, j] restores HF's order."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of q/k rows, as its converter writes them (the inverse of _unpermute_rows): each head's
    rows as [pair, j] swapped to [j, pair]."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantized(tensor) -> np.ndarray:
    from gguf.quants import dequantize

    array = dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    return np.ascontiguousarray(array.reshape(shape), dtype=np.float32)


def gguf_to_hf(path, out) -> dict:
    """Write the Hugging Face checkpoint directory of GGUF file `path` into the (new, empty) directory `out`."""
    from llmx.convert.tensors import StreamWriter

    path, out = Path(path), Path(out)
    reader = _reader(path)
    meta = _metadata(reader)
    check(meta)
    names = {t.name: _hf_name(t.name) for t in reader.tensors}
    config = hf_config(meta, tied="output.weight" not in names)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    plan: Dict[str, Tuple[str, Tuple[int, ...]]] = {
        names[t.name]: ("F32", tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    writer = StreamWriter(out / "model.safetensors", plan, metadata={"format": "pt"})  # "pt": transformers' own
    kinds = {}
    try:
        for t in reader.tensors:
            array = _dequantized(t)
            if t.name.endswith("attn_q.weight"):
                array = _unpermute_rows(array, heads)
            elif t.name.endswith("attn_k.weight"):
                array = _unpermute_rows(array, kv_heads)
            writer.write(names[t.name], array)
            kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: v for k, v in config.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (out / "tokenizer.json").write_text(tokenizer_json(meta))
    tok_config = tokenizer_config(meta, config)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    special = {k: v for k, v in tok_config.items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    return {"architecture": architecture(meta), "gguf_tensor_types": kinds}


def gguf_to_llmx(path, out, fam_name: Optional[str] = None, dtype: Optional[str] = None) -> dict:
    """Convert GGUF file `path` into the llmx model directory `out`, through a temporary HF directory beside it."""
    from llmx.convert.hf import hf_to_llmx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.gguf-", dir=out.parent) as hf_dir:
        found = gguf_to_hf(path, hf_dir)
        summary = hf_to_llmx(Path(hf_dir), out, fam_name, dtype)
    return {**summary, "source_format": "gguf", **found}
