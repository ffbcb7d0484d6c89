"""Hugging Face checkpoint directories as one llama.cpp GGUF file, written with the `gguf` package's GGUFWriter.

The stage writes an llmx model (or run) as a Hugging Face directory first (llmx.convert.hf.llmx_to_hf, a LoRA
run merged before), so this module starts from transformers' names and config keys, as llama.cpp's own
converter does. Tensor names come from the `gguf` package's table (`gguf.get_tensor_name_map`), the one
transformers' GGUF loader inverts; metadata keys from GGUFWriter's `add_*` methods. What llama.cpp changes
on the way is done here too: the q/k rows of llama-architecture models reordered for its rotary
(llmx.convert.gguf.llama_cpp_rows, the inverse of what the reader undoes), 1-D tensors kept in F32.

EXPORTS lists the families whose GGUF both llama.cpp and transformers 4.55's loader read (`general.architecture`,
and the name transformers needs to tell Mistral from Llama); `refusal` names what a file cannot carry
(rotary scaling: neither transformers' loader nor llmx's reader takes it back). Messages leave out the path:
callers prefix the key.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from llmx.convert.tensors import CheckpointError

log = logging.getLogger(__name__)

# llmx family -> (general.architecture, general.name or None: the source's name). llama.cpp writes Mistral as a
# llama (the same network; llama.cpp has no sliding window for it). transformers would read a file named
# "mistral" as Mistral, but its loader then asks the gguf package (0.19) for a "mistral" tensor table, which
# it lacks: so the name stays the source's, and transformers reads it as Llama.
EXPORTS = {"llama": ("llama", None), "mistral": ("llama", None), "qwen2": ("qwen2", None), "qwen3": ("qwen3", None)}
# llama.cpp's token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp's pre-tokenizer names for the splits llmx.convert.gguf rebuilds (digits cut apart: SmolLM's)
_PRE_GPT2, _PRE_DIGITS = "gpt2", "smollm"
SP_MODEL_FILES = ("tokenizer.model", "sentencepiece.bpe.model")


def refusal(family: str, config: dict) -> Optional[str]:
    """Why a model of `family` with (HF or PaddleNLP) `config` cannot be exported; None when it can."""
    if family not in EXPORTS:
        return (f"model family {family} has no GGUF export (llmx writes GGUF for {', '.join(EXPORTS)}: the "
                "families whose files llama.cpp and transformers' GGUF loader both read)")
    scaling = config.get("rope_scaling")
    if scaling:
        return (f"rope_scaling={scaling}: GGUF exports of rotary scaling are not written (transformers' GGUF "
                "loader ignores it, so the file could not be checked)")
    return None


def tokenizer_kind(directory: Path) -> Optional[str]:
    """'gpt2' (a byte-level BPE tokenizer.json), 'llama' (a SentencePiece model) or None (neither)."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        data = json.loads((directory / "tokenizer.json").read_text())
        if data.get("model", {}).get("type") == "BPE" and "ByteLevel" in json.dumps(data.get("pre_tokenizer")):
            return "gpt2"
    if any((directory / f).is_file() for f in SP_MODEL_FILES):
        return "llama"
    return None


# ----------------------------------------------------------------------------- tokenizer
def _token_text(value) -> Optional[str]:
    return value.get("content") if isinstance(value, dict) else value


def _byte_level_vocab(data: dict) -> Tuple[List[str], List[int], List[str], str]:
    """(tokens in id order, their llama.cpp types, merges 'a b', tokenizer.ggml.pre) of a tokenizer.json."""
    model = data["model"]
    by_id: Dict[int, Tuple[str, int]] = {i: (t, _NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], _CONTROL if added.get("special") else _USER_DEFINED)
    size = max(by_id) + 1
    tokens = [by_id.get(i, (f"[PAD{i}]", _UNUSED)) for i in range(size)]  # holes as llama.cpp fills them
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = json.dumps(data.get("pre_tokenizer"))
    digits = '"Digits"' in pre and '"individual_digits": true' in pre
    if '"Split"' in pre:
        log.warning("tokenizer.json: a regex pre-tokenizer llmx does not name for llama.cpp; written as %r",
                    _PRE_GPT2)
    return [t for t, _ in tokens], [k for _, k in tokens], merges, _PRE_DIGITS if digits else _PRE_GPT2


def _sentencepiece_vocab(path: Path) -> Tuple[List[str], List[float], List[int], bool]:
    """(pieces, scores, llama.cpp types, whether a space is put before the text) of a SentencePiece model.
    (Its user-defined pieces read as normal ones: only the model's protobuf tells them apart, and
    sentencepiece's generated protobuf code needs protobuf 7, which llmx's pins exclude.)"""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(_UNKNOWN if sp.is_unknown(i) else _CONTROL if sp.is_control(i) else _BYTE if sp.is_byte(i)
                     else _UNUSED if sp.is_unused(i) else _NORMAL)
    prefix = bool(sp.encode("a", out_type=str)) and sp.encode("a", out_type=str)[0].startswith("\u2581")
    return pieces, scores, types, prefix


def write_tokenizer(writer, directory: Path, hf_config: dict) -> dict:
    """The `tokenizer.*` metadata of HF dir `directory`'s tokenizer; what was written, for the summary."""
    from llmx.convert.tokenizer import chat_template_in

    directory = Path(directory)
    kind = tokenizer_kind(directory)
    tok_config = json.loads((directory / "tokenizer_config.json").read_text()) \
        if (directory / "tokenizer_config.json").is_file() else {}
    if kind == "gpt2":
        data = json.loads((directory / "tokenizer.json").read_text())
        tokens, types, merges, pre = _byte_level_vocab(data)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        post = json.dumps(data.get("post_processor"))
        bos = _token_text(tok_config.get("bos_token"))
        add_bos = tok_config.get("add_bos_token", bool(bos) and f'"{bos}"' in post)
    elif kind == "llama":
        sp_file = next(directory / f for f in SP_MODEL_FILES if (directory / f).is_file())
        tokens, scores, types, prefix = _sentencepiece_vocab(sp_file)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(prefix)
        add_bos = tok_config.get("add_bos_token", True)  # SentencePiece Llama tokenizers add it unless told
    else:
        raise CheckpointError("tokenizer: neither a byte-level BPE tokenizer.json nor a SentencePiece model; "
                              "GGUF holds only these two kinds (llama.cpp's 'gpt2' and 'llama')")
    index = {t: i for i, t in enumerate(tokens)}
    ids = {}
    for name in ("bos", "eos", "unk", "pad"):
        text = _token_text(tok_config.get(f"{name}_token"))
        i = index.get(text) if text is not None else hf_config.get(f"{name}_token_id")
        if isinstance(i, int) and 0 <= i < len(tokens):
            ids[name] = i
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if name in ids:
            add(ids[name])
    writer.add_add_bos_token(bool(add_bos))
    writer.add_add_eos_token(bool(tok_config.get("add_eos_token", False)))
    template = chat_template_in(directory)
    if isinstance(template, list):  # named templates: llama.cpp's tokenizer.chat_template.<name> beside the default
        named = {t["name"]: t["template"] for t in template}
        writer.add_chat_template([{"name": k, "template": v} for k, v in named.items()])
        template = named.get("default")
    elif template is not None:
        writer.add_chat_template(template)
    return {"tokenizer": kind, "vocabulary": len(tokens), "chat_template": template is not None,
            "add_bos": bool(add_bos), **{f"{k}_token_id": v for k, v in ids.items()}}


# ----------------------------------------------------------------------------- model
def _hparams(writer, fam_name: str, config: dict) -> None:
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    if EXPORTS[fam_name][0] == "llama":
        writer.add_rope_dimension_count(head_dim)  # (transformers reads it as head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _plan(fam_name: str, config: dict, index, gguf_type: str):
    """[(HF name, GGUF name, GGML type, shape)] in the file's order."""
    import gguf

    from llmx.convert.gguf_quants import tensor_type

    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == EXPORTS[fam_name][0])
    layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(arch, layers)
    tied = bool(config.get("tie_word_embeddings"))
    plan = []
    for hf_name in index.names():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(f"tensor {hf_name}: no llama.cpp name for it in the gguf package's "
                                  f"{EXPORTS[fam_name][0]} table")
        shape = tuple(index.infos[hf_name].shape)
        plan.append((hf_name, name, tensor_type(name, shape, gguf_type, layers), shape))
    return plan


def hf_to_gguf(hf_dir: Path, out: Path, fam_name: str, gguf_type: str, name: Optional[str] = None) -> dict:
    """Write HF checkpoint dir `hf_dir` (a model of llmx family `fam_name`) as GGUF file `out`, its matrices in
    `gguf_type` (llmx.convert.gguf_quants.FILE_TYPES), atomically."""
    import gguf

    from llmx.convert.gguf import llama_cpp_rows
    from llmx.convert.gguf_quants import FILE_TYPES, quantize
    from llmx.convert.hf import _cast, read_json
    from llmx.convert.tensors import TensorIndex

    hf_dir, out = Path(hf_dir), Path(out)
    config = read_json(hf_dir / "config.json")
    why = refusal(fam_name, config)
    if why:
        raise CheckpointError(why)
    arch, fixed_name = EXPORTS[fam_name]
    started = time.time()
    index = TensorIndex(hf_dir)
    plan = _plan(fam_name, config, index, gguf_type)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    writer = gguf.GGUFWriter(str(part), arch)
    kinds: Dict[str, int] = {}
    try:
        label = fixed_name or name or hf_dir.name
        writer.add_name(f"{label} (llama)" if label == "mistral" else label)  # (EXPORTS: not read as Mistral)
        writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[gguf_type][0]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _hparams(writer, fam_name, config)
        summary = write_tokenizer(writer, hf_dir, config)
        for _, gname, kind, shape in plan:  # the tensor table first, so that tensors stream one at a time
            qtype = gguf.GGMLQuantizationType[kind]
            nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype)))
            writer.add_tensor_info(gname, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for hf_name, gname, kind, _ in plan:
            array = _cast(index.get(hf_name), index.infos[hf_name].dtype, "float32")
            if arch == "llama" and gname.endswith("attn_q.weight"):
                array = llama_cpp_rows(array, heads)
            elif arch == "llama" and gname.endswith("attn_k.weight"):
                array = llama_cpp_rows(array, kv_heads)
            writer.write_tensor_data(quantize(np.asarray(array, dtype=np.float32), kind))
            kinds[kind] = kinds.get(kind, 0) + 1
            del array
        writer.close()
        part.replace(out)
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise
    finally:
        index.close()
    return {"direction": "to_gguf", "family": fam_name, "architecture": arch, "gguf_type": gguf_type,
            "gguf_file": str(out), "tensors": len(plan), "gguf_tensor_types": kinds,
            "megabytes": round(out.stat().st_size / 1e6, 3), "seconds": round(time.time() - started, 3), **summary}
