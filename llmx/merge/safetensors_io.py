"""Reading and writing safetensors one tensor at a time, paddle-free.

Written by hand because the `safetensors` package writes a whole dict at once (a merge would then
hold the whole output model) and its numpy reader refuses bfloat16. The format is simple: 8 bytes of
header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
      "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "I16": np.int16}
CODE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
        "int8": "I8", "uint8": "U8", "bool": "BOOL", "int16": "I16"}


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    for v in header.values():
        v["start"] = 8 + n
    return header


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory (one file or an index's shards); [] when it has none."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
    return sorted(model_dir.glob("*.safetensors"))


class Reader:
    """The tensors of a model directory's safetensors files, each read (as float32 for floating types) on demand."""

    def __init__(self, model_dir: Path):
        self.entries: dict[str, tuple[Path, dict]] = {}
        for f in weight_files(Path(model_dir)):
            for name, meta in read_header(f).items():
                self.entries[name] = (f, meta)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple:
        return tuple(self.entries[name][1]["shape"])

    def dtype(self, name: str) -> str:
        return self.entries[name][1]["dtype"]

    def get(self, name: str, float32: bool = True) -> np.ndarray:
        f, meta = self.entries[name]
        a, b = meta["data_offsets"]
        with open(f, "rb") as fh:
            fh.seek(meta["start"] + a)
            arr = np.frombuffer(fh.read(b - a), dtype=NP[meta["dtype"]]).reshape(meta["shape"])
        if meta["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32) if float32 else arr
        elif float32 and meta["dtype"] in ("F16", "F64"):
            arr = arr.astype(np.float32)
        return arr


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


class Writer:
    """A safetensors file whose header is known up front ({name: (dtype name, shape)}, in order);
    tensors are then written one by one, in that order, and not kept."""

    def __init__(self, path: Path, layout: Iterable[tuple[str, str, tuple]], metadata: dict | None = None):
        header, offset, self.order = {}, 0, []
        for name, dtype, shape in layout:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(NP[CODE[dtype]]).itemsize
            header[name] = {"dtype": CODE[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            self.order.append((name, dtype, tuple(shape)))
        header["__metadata__"] = metadata or {"format": "np"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        want, dtype, shape = self.order[self.next]
        if name != want or tuple(array.shape) != shape:
            raise ValueError(f"writer expected {want} {shape}, got {name} {tuple(array.shape)}")
        if dtype == "bfloat16":
            array = to_bf16_bits(array)
        else:
            array = np.ascontiguousarray(array, dtype=NP[CODE[dtype]])
        self.f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        self.next += 1

    def close(self) -> None:
        self.f.close()
        if self.next != len(self.order):
            raise ValueError(f"writer closed after {self.next} of {len(self.order)} tensors")
