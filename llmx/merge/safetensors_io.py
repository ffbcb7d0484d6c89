"""Merge's view of checkpoint tensors, one at a time, over llmx.convert.tensors (the one hand-written
safetensors reader and writer: the `safetensors` package writes only whole dicts and its numpy reader
refuses bfloat16). Merging computes in float32: reads widen floating types, writes narrow them to the
output dtype."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from llmx.convert.tensors import ST_DTYPES, StreamWriter, TensorIndex
from llmx.convert.tensors import weight_files as checkpoint_files

CODE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
        "int8": "I8", "uint8": "U8", "bool": "BOOL", "int16": "I16"}


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory (one file or an index's shards); [] when it has none."""
    return [f for f in checkpoint_files(Path(model_dir)) if f.suffix == ".safetensors"]


class Reader:
    """The tensors of a model directory's safetensors files, each read (as float32 for floating types) on demand."""

    def __init__(self, model_dir: Path):
        self.index = TensorIndex(Path(model_dir), weight_files(Path(model_dir)))

    def names(self) -> list[str]:
        return self.index.names()

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def shape(self, name: str) -> tuple:
        return tuple(self.index.infos[name].shape)

    def dtype(self, name: str) -> str:
        return self.index.infos[name].dtype

    def get(self, name: str, float32: bool = True) -> np.ndarray:
        arr, dtype = self.index.get(name), self.dtype(name)
        if float32 and dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if float32 and dtype in ("F16", "F64"):
            return arr.astype(np.float32)
        return arr


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


class Writer:
    """A safetensors file whose tensors are declared up front ((name, dtype name, shape), in order) and then
    written one by one, in that order, each cast to its declared dtype."""

    def __init__(self, path: Path, layout: Iterable[tuple[str, str, tuple]], metadata: dict | None = None):
        layout = list(layout)
        self.dtypes = {name: dtype for name, dtype, _ in layout}
        self.stream = StreamWriter(Path(path), {name: (CODE[dtype], tuple(shape)) for name, dtype, shape in layout},
                                   metadata or {"format": "np"})

    def write(self, name: str, array: np.ndarray) -> None:
        dtype = self.dtypes[name]
        array = to_bf16_bits(array) if dtype == "bfloat16" else np.ascontiguousarray(array, dtype=ST_DTYPES[CODE[dtype]])
        self.stream.write(name, array)

    def close(self) -> None:
        self.stream.close()

    def abandon(self) -> None:
        self.stream.abandon()
