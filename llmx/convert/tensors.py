"""Checkpoint tensors read and written one at a time (paddle-free, torch-free).

A checkpoint directory is opened as a `TensorIndex`: every tensor's name, shape and dtype from
the file headers alone (safetensors headers; a pytorch_model.bin's pickle, whose storages are
not read), sharded or not. `index.get(name)` then reads that one tensor. `StreamWriter` writes
a safetensors file tensor by tensor: the header (every name, dtype, shape, offset) is known
before any data, so nothing but the tensor being written is held in memory.

Why by hand: the `safetensors` package writes only from a complete in-memory dict, its numpy
reader refuses bfloat16 (what most HF checkpoints hold), and `torch.load` needs torch (a test
dependency only). Conversion only moves bytes, so tensors stay in their stored dtype throughout
(bfloat16 travels as its raw 16-bit words).
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from llmx.errors import UserError

# safetensors dtype code -> numpy dtype that holds its bytes (BF16: raw 16-bit words)
ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_TORCH_STORAGES = {"DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
                   "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
                   "ByteStorage": "U8", "BoolStorage": "BOOL"}
SAFE_INDEX = "model.safetensors.index.json"
_BLOCK = 16 << 20  # bytes copied at a time when a tensor is written out of a transposed view
BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model: one line."""

    kind = "checkpoint error"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: Tuple[int, ...]
    dtype: str  # safetensors code: F32, BF16, ...
    file: Path

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(ST_DTYPES[self.dtype]).itemsize


# ----------------------------------------------------------------------------- safetensors
def _safetensors_header(path: Path) -> Tuple[dict, int]:
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its header)")
        (size,) = struct.unpack("<Q", size_bytes)
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None
    return header, 8 + size


class _SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        self.header, self.data_start = _safetensors_header(path)
        self.metadata = self.header.pop("__metadata__", None) or {}

    def infos(self) -> List[TensorInfo]:
        return [TensorInfo(name, tuple(h["shape"]), h["dtype"], self.path) for name, h in self.header.items()]

    def get(self, name: str) -> np.ndarray:
        # A plain read, not a memory map: mapped pages would stay in this process's resident memory
        # until the whole file is done, so peak memory would grow with the checkpoint.
        h = self.header[name]
        start, _ = h["data_offsets"]
        count = int(np.prod(h["shape"], dtype=np.int64))
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            array = np.fromfile(f, dtype=ST_DTYPES[h["dtype"]], count=count)
        return array.reshape(h["shape"])

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- pytorch_model.bin
@dataclass
class _StorageRef:
    key: str
    dtype: str


@dataclass
class _TorchTensorRef:
    storage: _StorageRef
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _TorchTensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


class _LazyTorchUnpickler(pickle.Unpickler):
    """Reads a torch zip checkpoint's structure (names, shapes, storage keys) without its data and
    without torch; refuses every class but the few a state dict is made of (no code runs)."""

    ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
               ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
               ("torch", "Size")}

    def find_class(self, module, name):
        if module == "torch" and name in _TORCH_STORAGES:
            return name
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")
        if name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if name.startswith("_rebuild_parameter"):
            return _rebuild_parameter
        if name == "Size":
            return tuple
        return super().find_class(module, name)

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, _numel = saved_id
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if not isinstance(storage_type, str):  # torch >= 2 pickles `torch.UntypedStorage` plus a dtype later
            raise pickle.UnpicklingError(f"storage type {storage_type!r}")
        return _StorageRef(str(key), _TORCH_STORAGES[storage_type])


class _TorchBinFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise CheckpointError(f"{path}: not a torch zip checkpoint (legacy non-zip .bin files are not read)") \
                from None
        pkl = next((n for n in self.zip.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise CheckpointError(f"{path}: no data.pkl inside (not a torch checkpoint)")
        self.prefix = pkl[: -len("data.pkl")]
        with self.zip.open(pkl) as f:
            try:
                state = _LazyTorchUnpickler(f, encoding="utf-8").load()
            except (pickle.UnpicklingError, KeyError, ValueError) as e:
                raise CheckpointError(f"{path}: not a plain state dict ({e})") from None
        self.refs: Dict[str, _TorchTensorRef] = {k: v for k, v in state.items() if isinstance(v, _TorchTensorRef)}

    def infos(self) -> List[TensorInfo]:
        return [TensorInfo(name, r.shape, r.storage.dtype, self.path) for name, r in self.refs.items()]

    def get(self, name: str) -> np.ndarray:
        r = self.refs[name]
        dtype = np.dtype(ST_DTYPES[r.storage.dtype])
        numel = int(np.prod(r.shape, dtype=np.int64))
        with self.zip.open(f"{self.prefix}data/{r.storage.key}") as f:
            f.seek(r.offset * dtype.itemsize)  # only the bytes up to this tensor's end are read
            span = (sum((n - 1) * s for n, s in zip(r.shape, r.stride)) + 1) if numel else 0
            flat = np.frombuffer(f.read(span * dtype.itemsize), dtype=dtype)
        return np.lib.stride_tricks.as_strided(flat, r.shape, [s * dtype.itemsize for s in r.stride]) \
            if numel else np.zeros(r.shape, dtype)

    def close(self) -> None:
        self.zip.close()


# ----------------------------------------------------------------------------- a directory
def weight_files(directory: Path) -> List[Path]:
    """The weight files of a checkpoint directory: safetensors first, else pytorch .bin; sharded (by
    its index json) or single."""
    d = Path(directory)
    for index_name, single, pattern in ((SAFE_INDEX, "model.safetensors", "*.safetensors"),
                                        (BIN_INDEX, "pytorch_model.bin", "pytorch_model*.bin")):
        if (d / index_name).is_file():
            shards = sorted(set(json.loads((d / index_name).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise CheckpointError(f"{d / index_name}: names shard {missing[0]}, which is not in {d}")
            return [d / s for s in shards]
        if (d / single).is_file():
            return [d / single]
        found = sorted(d.glob(pattern))
        if found:
            return found
    return []


class _PdparamsFile:
    """PaddleNLP's pickled `model_state.pdparams` (what its convert_from_torch writes): paddle's own loader
    reads it whole, so this one format is not streamed."""

    def __init__(self, path: Path):
        import paddle

        from llmx.compat.paddle import restrict_unpickling

        restrict_unpickling()  # data only (llmx.safe_pickle), whoever calls
        self.path = path
        self.state = {k: np.asarray(v) for k, v in paddle.load(str(path), return_numpy=True).items()}

    def infos(self) -> List[TensorInfo]:
        out = []
        for name, v in self.state.items():
            code = "BF16" if v.dtype == np.uint16 else dtype_code(v)
            out.append(TensorInfo(name, tuple(v.shape), code, self.path))
        return out

    def get(self, name: str) -> np.ndarray:
        return self.state[name]

    def close(self) -> None:
        self.state = {}


class TensorIndex:
    """Every tensor of a checkpoint directory (or of the given files), readable one at a time."""

    def __init__(self, directory: Path, files: Optional[Iterable[Path]] = None):
        self.directory = Path(directory)
        files = list(files) if files is not None else weight_files(self.directory)
        if not files and (self.directory / "model_state.pdparams").is_file():
            files = [self.directory / "model_state.pdparams"]
        if not files:
            raise CheckpointError(f"{self.directory}: no model.safetensors, *.safetensors, pytorch_model*.bin or "
                                  "model_state.pdparams")
        kinds = {".safetensors": _SafetensorsFile, ".bin": _TorchBinFile, ".pdparams": _PdparamsFile}
        self.files = [kinds[f.suffix](f) for f in files]
        self.infos: Dict[str, TensorInfo] = {}
        self._owner = {}
        for file in self.files:
            for info in file.infos():
                self.infos[info.name] = info
                self._owner[info.name] = file

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> List[str]:
        return list(self.infos)

    def get(self, name: str) -> np.ndarray:
        return self._owner[name].get(name)

    def close(self) -> None:
        for f in self.files:
            f.close()

    @property
    def largest(self) -> int:
        return max((i.nbytes for i in self.infos.values()), default=0)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())


def dtype_code(array: np.ndarray, bfloat16: bool = False) -> str:
    if bfloat16:
        return "BF16"
    for code, np_dtype in ST_DTYPES.items():
        if code != "BF16" and array.dtype == np.dtype(np_dtype):
            return code
    raise CheckpointError(f"dtype {array.dtype} has no safetensors code")


class StreamWriter:
    """One safetensors file written tensor by tensor. Declare every tensor first (`plan`: name ->
    (dtype code, shape)); `write(name, array)` then writes them in that order, each straight to disk."""

    def __init__(self, path: Path, plan: Dict[str, Tuple[str, Tuple[int, ...]]], metadata: Optional[dict] = None):
        self.path = Path(path)
        self.order = list(plan)
        header, offset = {}, 0
        for name, (code, shape) in plan.items():
            n = int(np.prod(shape, dtype=np.int64)) * np.dtype(ST_DTYPES[code]).itemsize
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        if metadata:
            header = {"__metadata__": {k: str(v) for k, v in metadata.items()}, **header}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors writer does
        self.header = header
        self._next = 0
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, array: np.ndarray) -> None:
        expected = self.order[self._next]
        if name != expected:
            raise RuntimeError(f"StreamWriter: {name} written where {expected} was planned")
        h = self.header[name]
        if tuple(array.shape) != tuple(h["shape"]) or array.dtype.itemsize != np.dtype(ST_DTYPES[h["dtype"]]).itemsize:
            raise RuntimeError(f"StreamWriter: {name} is {array.dtype}{list(array.shape)}, planned "
                               f"{h['dtype']}{h['shape']}")
        if array.flags.c_contiguous:
            self._file.write(memoryview(array.reshape(-1)).cast("B"))  # no copy
        else:  # (a transposed view): copied to C order in blocks of rows, so never whole a second time
            rows = max(1, _BLOCK // max(1, array[0].nbytes)) if array.ndim > 1 else len(array)
            for start in range(0, len(array), rows):
                block = np.ascontiguousarray(array[start:start + rows])
                self._file.write(memoryview(block.reshape(-1)).cast("B"))
        self._next += 1

    def abandon(self) -> None:
        """Close the file after a failure, without checking that every planned tensor was written."""
        self._file.close()

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.order):
            raise RuntimeError(f"StreamWriter: {len(self.order) - self._next} planned tensors were not written")
