"""Hugging Face <-> llmx (PaddleNLP) checkpoints, tensor by tensor.

Names and layouts come from PaddleNLP itself: each model class's `_get_name_mappings(config)`
lists, per PaddleNLP tensor, its Hugging Face name and the action that turns one into the other
(a transpose of Linear weights, or a third of a fused qkv). PaddleNLP applies them only one way,
only by loading the whole checkpoint, and writes its result into the source directory
(`convert_from_torch=True`); llmx walks the same list in both directions, reading and writing
one tensor at a time (llmx.convert.tensors), and writes only into a new directory.

What the list leaves out is family knowledge, kept in each family's record (llmx.families.<family>):
the Hugging Face model_type/architecture, config keys spelled differently, heads that Hugging Face
ties to the embedding and PaddleNLP keeps apart, fused q/k/v tensors and name prefixes.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from llmx.convert.tensors import CheckpointError, StreamWriter, TensorIndex
from llmx.convert.tokenizer import tokenizer_from_hf, tokenizer_to_hf
from llmx.families import Family, family

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
# PaddleNLP-only config keys: parallel layout, fused kernels, recompute. Never written into an HF config.
_PADDLE_ONLY_PREFIXES = ("tensor_parallel", "pipeline_parallel", "sep_parallel", "context_parallel", "virtual_pp",
                         "sequence_parallel", "use_fused", "fuse_", "use_flash", "recompute", "refined_recompute",
                         "no_recompute", "pp_recompute", "offload_recompute", "immediate_clear", "use_fast_layer_norm",
                         "long_sequence", "use_long_sequence", "dpo_config", "paddlenlp_version", "quantization_config",
                         "use_last_token_for_generation", "ignore_index", "dtype", "mp_degree")


@dataclass(frozen=True)
class Move:
    """One Hugging Face tensor <-> one PaddleNLP tensor (`part` set: a third of a fused HF tensor, cut
    along `axis` of the HF tensor)."""
    hf: str
    paddle: str
    transpose: bool = False
    part: Optional[int] = None
    axis: int = -1


def shape_str(shape) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


# ----------------------------------------------------------------------------- configs
def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a model directory needs its config.json)") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def paddle_names(fam: Family, hf_config: dict) -> dict:
    """An HF config.json's values under PaddleNLP's key names (as the family table says), less HF's class
    markers, with what it implies rather than states (`Family.hf_config_in`): what the converted model's config
    is made from (paddle-free)."""
    renamed = {v: k for k, v in fam.hf_config_keys.items()}
    out = {renamed.get(k, k): v for k, v in hf_config.items() if k not in ("architectures", "model_type",
                                                                        "auto_map", "torch_dtype")}
    return {**out, **fam.hf_config_in(hf_config)} if fam.hf_config_in else out


def paddle_config(fam: Family, hf_config: dict):
    """The PaddleNLP config of an HF config.json (keys renamed as the family's record says)."""

    config = fam.load_class("config_class").from_dict(paddle_names(fam, hf_config))
    config.architectures = [fam.architecture]
    return config


def hf_config(fam: Family, config: dict, dtype: str) -> dict:
    """The HF config.json of a PaddleNLP config dict: the family's own keys under HF's names (generic keys
    left at the defaults both libraries share are left out), model_type and architecture."""
    import paddlenlp.transformers as pnt

    generic = pnt.PretrainedConfig().to_dict()
    keep = {"bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"}
    out = {}
    for key, value in config.items():
        if key.startswith(_PADDLE_ONLY_PREFIXES) or key in ("architectures", "model_type", "auto_map",
                                                            "return_dict", "use_cache", "_name_or_path"):
            continue
        if key in generic and key not in keep and generic[key] == value:
            continue
        out[fam.hf_config_keys.get(key, key)] = value
    out.update(fam.hf_config_extra)
    out["model_type"] = fam.hf_model_type
    out["architectures"] = [fam.hf_architecture]
    out["torch_dtype"] = dtype
    out["use_cache"] = True
    return dict(sorted((fam.hf_config_out(out) if fam.hf_config_out else out).items()))


# ----------------------------------------------------------------------------- name maps
def moves(fam: Family, config) -> List[Move]:
    """PaddleNLP's own name map of the family's class (or the family's, Family.hf_name_map), as Moves."""

    if fam.hf_name_map is not None:  # written by llmx where PaddleNLP has none
        return [Move(hf, paddle, transpose) for hf, paddle, transpose in fam.hf_name_map(config)]
    cls = fam.load_class()
    out = []
    try:
        mappings = cls._get_name_mappings(config)
    except NotImplementedError:  # (ChatGLM v1 in paddlenlp 3.0.0b4)
        raise CheckpointError(f"PaddleNLP's {fam.architecture} has no Hugging Face name map: model family "
                              f"{fam.name} cannot be converted") from None
    for m in mappings:
        if callable(m.action) or m.action not in (None, "transpose", "split"):
            raise CheckpointError(f"{fam.architecture}: name map action {m.action!r} for {m.source_name} "
                                  f"is not supported by llmx.convert")
        source, target = m.source_name, m.target_name
        if fam.hf_map_prefix and not target.startswith(fam.hf_map_prefix[0]):
            source, target = fam.hf_map_prefix[1] + source, fam.hf_map_prefix[0] + target
        out.append(Move(source, target, m.action == "transpose", m.index if m.action == "split" else None))
    if fam.hf_fused_qkv:  # HF keeps q, k and v in one [3 * out, in] tensor (rows: q, then k, then v)
        fused = []
        for mv in out:
            for i, which in enumerate(("q_proj", "k_proj", "v_proj")):
                if mv.hf.endswith(f".self_attn.{which}.weight"):
                    mv = Move(mv.hf.replace(which, fam.hf_fused_qkv), mv.paddle, mv.transpose, i, axis=0)
            fused.append(mv)
        out = fused
    return out


def _rotary_buffer(name: str) -> bool:
    # recomputed from the config by both libraries: rotary frequencies, GPT-2's causal mask (older files keep it)
    return name.endswith(("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias"))


def _as_saved(mv: Move, index: TensorIndex) -> Move:
    """transformers saves a base model (GPT2Model: the original GPT-2 files) without its prefix (`transformer.`)."""
    bare = mv.hf.split(".", 1)[-1]
    return replace(mv, hf=bare) if mv.hf not in index and bare in index else mv


def expected_tensors(fam: Family, config) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, str]]:
    """The PaddleNLP model's tensors (name -> shape), built without memory (paddle.LazyGuard), and its
    tied names (alias -> the name its tensor is saved under)."""
    import paddle

    from llmx.families import fixes

    from paddlenlp.transformers.model_utils import no_init_weights

    fixes.apply(fam.fixes, fixes.BEFORE_BUILD)
    with no_init_weights(), paddle.LazyGuard():  # (some classes' init writes into parameters)
        model = fam.load_class()(config)
    state = model.state_dict()
    by_id: Dict[int, str] = {}
    shapes, aliases = {}, {}
    # The embedding's name wins over a head sharing its tensor (it is what both libraries save).
    for name in sorted(state, key=lambda n: n.startswith("lm_head")):
        first = by_id.setdefault(id(state[name]), name)
        if first != name:
            aliases[name] = first
        else:
            shapes[name] = tuple(int(n) for n in state[name].shape)
    return shapes, aliases


# ----------------------------------------------------------------------------- HF -> llmx
def hf_to_llmx(src: Path, out: Path, fam_name: Optional[str] = None, dtype: Optional[str] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Convert the HF checkpoint directory `src` into the llmx/PaddleNLP model directory `out`
    (written under a temporary name, then renamed; `src` is only read)."""
    from llmx.experiment import atomic_dir

    src, out = Path(src), Path(out)
    hf = read_json(src / "config.json")
    fam = family(check_family(hf, fam_name, src))
    config = paddle_config(fam, hf)
    index = TensorIndex(src)
    shapes, aliases = expected_tensors(fam, config)
    plan = _plan_from_hf(fam, config, index, shapes, aliases, hf)
    started = time.time()
    out_dtype = dtype or _stored_dtype(index)
    with atomic_dir(out) as tmp:
        header = {name: (_target_code(index.infos[srcs[0].hf].dtype, dtype), shapes[name])
                  for name, srcs in plan.items()}
        writer = StreamWriter(tmp / WEIGHTS, header, metadata={"format": "np"})
        written = 0
        for i, (name, srcs) in enumerate(plan.items()):
            array = _cast(_assemble_from_hf(index, srcs), index.infos[srcs[0].hf].dtype, dtype)
            writer.write(name, array)
            written += array.nbytes
            del array
            if progress:
                progress(i + 1, len(plan))
        writer.close()
        config.dtype = out_dtype
        config.save_pretrained(str(tmp))
        tokenizer_from_hf(src, tmp, fam.sp_tokenizer)
        if (src / "generation_config.json").is_file():  # PaddleNLP reads HF's generation defaults as they are
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
    index.close()
    seconds = time.time() - started
    log.info("converted %d tensors (%.1f MB) from %s to %s in %.1f s", len(plan), written / 1e6, src, out, seconds)
    return {"direction": "from_hf", "family": fam.name, "tensors": len(plan), "megabytes": round(written / 1e6, 3),
            "seconds": round(seconds, 3), "model_dir": str(out)}


def check_family(hf: dict, fam_name: Optional[str], where: Path) -> str:
    from llmx.families import family_of_hf_config

    found = family_of_hf_config(hf)
    if fam_name is None:
        if found is None:
            raise CheckpointError(f"{where}/config.json: model_type={hf.get('model_type')!r}, architectures="
                                  f"{hf.get('architectures')}: no llmx family; name one with model=<family>")
        return found
    family(fam_name)
    if found is not None and found != fam_name:
        raise CheckpointError(f"{where}/config.json: a {found} checkpoint (model_type={hf.get('model_type')!r}), "
                              f"but model family {fam_name} was asked for")
    return fam_name


def _plan_from_hf(fam: Family, config, index: TensorIndex, shapes, aliases, hf: dict) -> Dict[str, List[Move]]:
    """PaddleNLP name -> the HF tensors it is made of, checked against the checkpoint: every expected
    tensor present with its shape, nothing left over."""
    by_target: Dict[str, List[Move]] = {}
    for mv in moves(fam, config):
        by_target.setdefault(mv.paddle, []).append(_as_saved(mv, index))
    plan: Dict[str, List[Move]] = {}
    used = set()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, shape in shapes.items():
        srcs = by_target.get(name)
        if not srcs and fam.hf_tied_head and name == fam.hf_tied_head[0]:
            head_hf = fam.hf_tied_head[1]
            srcs = [Move(head_hf if head_hf in index else fam.hf_tied_head[2], name)]
        if not srcs:
            raise CheckpointError(f"{fam.architecture} tensor {name} {shape_str(shape)}: no Hugging Face name "
                                  f"for it in PaddleNLP's name map")
        for mv in srcs:
            if mv.hf not in index:
                raise CheckpointError(f"{index.directory}: missing tensor {mv.hf} (the model's {name} "
                                      f"{shape_str(shape)})")
        got = _shape_from_hf(index, srcs)
        if got != shape:
            hf_shape = index.infos[srcs[0].hf].shape
            raise CheckpointError(f"{index.directory}: tensor {srcs[0].hf} has shape {shape_str(hf_shape)}, the "
                                  f"model's {name} needs {shape_str(_hf_shape(shape, srcs[0]))} (from config.json)")
        plan[name] = srcs
        used.update(mv.hf for mv in srcs)
    # A tied head: HF's torch .bin files keep it under its own name too (the embedding's storage).
    head_names = {mv.hf for name in aliases for mv in by_target.get(name, [])} | ({"lm_head.weight"} if tied else set())
    if fam.hf_tied_head:
        head_names.add(fam.hf_tied_head[1])
    extra = [n for n in index.names() if n not in used and not _rotary_buffer(n) and n not in head_names]
    if extra:
        info = index.infos[extra[0]]
        raise CheckpointError(f"{info.file}: unexpected tensor {extra[0]} {shape_str(info.shape)} (not part of "
                              f"{fam.architecture} with this config.json; {len(extra)} such)")
    return plan


def _hf_shape(paddle_shape, mv: Move):
    shape = tuple(paddle_shape)
    if mv.transpose:
        shape = shape[::-1]
    if mv.part is not None:
        shape = list(shape)
        shape[mv.axis] *= 3
        shape = tuple(shape)
    return shape


def _shape_from_hf(index: TensorIndex, srcs: List[Move]):
    shape = list(index.infos[srcs[0].hf].shape)
    if srcs[0].part is not None:
        shape[srcs[0].axis] //= 3
    return tuple(shape[::-1] if srcs[0].transpose else shape)


def _assemble_from_hf(index: TensorIndex, srcs: List[Move]) -> np.ndarray:
    mv = srcs[0]
    array = index.get(mv.hf)
    if mv.part is not None:
        array = np.split(array, 3, axis=mv.axis)[mv.part]
    return array.T if mv.transpose else array


# ----------------------------------------------------------------------------- llmx -> HF
def llmx_to_hf(src: Path, out: Path, fam_name: Optional[str] = None, dtype: Optional[str] = None,
               progress: Optional[Callable[[int, int], None]] = None, tokenizer_dir: Optional[Path] = None) -> dict:
    """Convert the llmx/PaddleNLP model directory `src` into an HF directory `out` that
    transformers' AutoModelForCausalLM loads (safetensors, HF names, HF config.json keys), with the
    tokenizer of `tokenizer_dir` (default: `src`)."""
    from llmx.experiment import atomic_dir
    from llmx.families import family_of_paddle_config, share_weights

    src, out = Path(src), Path(out)
    pconf = read_json(src / "config.json")
    found = family_of_paddle_config(pconf)
    if fam_name is not None and found is not None and found != fam_name and not share_weights(found, fam_name):
        raise CheckpointError(f"{src}/config.json: a {found} model (architectures={pconf.get('architectures')}), "
                              f"but model family {fam_name} was asked for")
    fam = family(fam_name or found or "")

    config = fam.load_class("config_class").from_pretrained(str(src))
    config.architectures = [fam.architecture]
    config.tensor_parallel_degree = 1
    index = TensorIndex(src)
    shapes, aliases = expected_tensors(fam, config)
    # A saved model may list a tied head under its own name too: it is the embedding.
    names = {n: n for n in shapes}
    names.update({a: t for a, t in aliases.items()})
    for name in index.names():
        if name not in names and not _rotary_buffer(name):
            info = index.infos[name]
            raise CheckpointError(f"{info.file}: unexpected tensor {name} {shape_str(info.shape)} (not part of "
                                  f"{fam.architecture} with this config.json)")
    stored = {}
    for name, shape in shapes.items():
        have = name if name in index else next((a for a, t in aliases.items() if t == name and a in index), None)
        if have is None:
            raise CheckpointError(f"{src}: missing tensor {name} {shape_str(shape)}")
        if tuple(index.infos[have].shape) != shape:
            raise CheckpointError(f"{src}: tensor {have} has shape {shape_str(index.infos[have].shape)}, the "
                                  f"model needs {shape_str(shape)} (from config.json)")
        stored[name] = have
    by_hf: Dict[str, List[Move]] = {}
    for mv in moves(fam, config):
        if mv.paddle in shapes:
            by_hf.setdefault(mv.hf, []).append(mv)
    tie = bool(getattr(config, "tie_word_embeddings", False))
    head = fam.hf_tied_head
    if head and head[0] in shapes:  # PaddleNLP keeps the head apart; HF ties it unless told otherwise
        same = np.array_equal(index.get(stored[head[0]]), index.get(stored[_embedding_of(by_hf, head)]))
        tie = same
        if not same:
            by_hf[head[1]] = [Move(head[1], head[0])]
    plan = {hf_name: sorted(mvs, key=lambda m: m.part or 0) for hf_name, mvs in by_hf.items()}
    covered = {mv.paddle for mvs in plan.values() for mv in mvs}
    left = [n for n in shapes if n not in covered and not (head and n == head[0])]
    if left:
        raise CheckpointError(f"{src}: tensor {left[0]} {shape_str(shapes[left[0]])} has no Hugging Face name in "
                              f"PaddleNLP's name map of {fam.architecture}")
    started = time.time()
    first_dtype = index.infos[next(iter(stored.values()))].dtype
    hf_dtype = dtype or {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(first_dtype, "float32")
    with atomic_dir(out) as tmp:
        header = {}
        for hf_name, mvs in plan.items():
            shape = _hf_shape(shapes[mvs[0].paddle], mvs[0])
            header[hf_name] = (_target_code(index.infos[stored[mvs[0].paddle]].dtype, dtype), shape)
        writer = StreamWriter(tmp / WEIGHTS, header, metadata={"format": "pt"})
        written = 0
        for i, (hf_name, mvs) in enumerate(plan.items()):
            parts = [index.get(stored[mv.paddle]) for mv in mvs]
            parts = [p.T if mv.transpose else p for p, mv in zip(parts, mvs)]
            array = np.concatenate(parts, axis=mvs[0].axis) if mvs[0].part is not None else parts[0]
            array = _cast(array, index.infos[stored[mvs[0].paddle]].dtype, dtype)
            writer.write(hf_name, array)
            written += array.nbytes
            del array, parts
            if progress:
                progress(i + 1, len(plan))
        writer.close()
        cfg = hf_config(fam, config.to_dict(), hf_dtype)
        cfg["tie_word_embeddings"] = tie
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tokenizer_to_hf(Path(tokenizer_dir or src), tmp)
        if (src / "generation_config.json").is_file():
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
    index.close()
    seconds = time.time() - started
    return {"direction": "to_hf", "family": fam.name, "tensors": len(plan), "megabytes": round(written / 1e6, 3),
            "seconds": round(seconds, 3), "model_dir": str(out)}


def _embedding_of(by_hf: Dict[str, List[Move]], head) -> str:
    for hf_name in (head[1], head[2]):
        if hf_name in by_hf:
            return by_hf[hf_name][0].paddle
    raise CheckpointError(f"no embedding named {head[1]} or {head[2]} in PaddleNLP's name map")


# ----------------------------------------------------------------------------- helpers
def _stored_dtype(index: TensorIndex) -> str:
    codes = {i.dtype for i in index.infos.values()}
    for code, name in (("BF16", "bfloat16"), ("F16", "float16"), ("F32", "float32")):
        if code in codes:
            return name
    return "float32"


_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _target_code(stored: str, dtype: Optional[str]) -> str:
    if dtype is None or stored not in ("F32", "F16", "BF16"):
        return stored
    return _CODES[dtype]


def _cast(array: np.ndarray, stored: str, dtype: Optional[str]) -> np.ndarray:
    target = _target_code(stored, dtype)
    if target == stored:
        return array
    as_float = array.astype(np.uint32) << 16 if stored == "BF16" else array
    as_float = as_float.view(np.float32) if stored == "BF16" else as_float.astype(np.float32)
    if target == "BF16":  # round to nearest even, as torch does
        bits = np.ascontiguousarray(as_float, dtype=np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return as_float.astype(np.float16 if target == "F16" else np.float32)
