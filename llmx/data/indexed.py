"""Tokenized pretraining data: the "MMIDIDX" indexed layout of Megatron-LM and PaddleNLP.

A dataset is a pair of files sharing a prefix. `<prefix>.bin` holds every
sequence's token ids back to back, in one integer dtype, with no header.
`<prefix>.idx` describes them (all integers little-endian):

    offset  size          field
    0       9             magic b"MMIDIDX\\x00\\x00"
    9       8   <Q        version, always 1
    17      1   <B        dtype code of the .bin (table below)
    18      8   <Q        S: number of sequences
    26      8   <Q        D: number of entries in doc_idx (documents + 1)
    34      4*S int32     sizes: tokens per sequence
    ..      8*S int64     pointers: byte offset of each sequence in .bin
    ..      8*D int64     doc_idx: sequence index where each document starts,
                          starting with 0 and ending with S

    dtype codes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32,
                 8 uint16; PaddleNLP also reads 9 uint32 and 10 uint64.

Megatron may append one int8 "mode" per sequence for multimodal data; those
trailing bytes are ignored here. PaddleNLP's older formats (`TNTIDX` "lazy"
indexes and `<prefix>_ids.npy` + `<prefix>_idx.npz`) are not read; we say so.

llmx writes one sequence per document (doc_idx = 0, 1, ..., S), uint16 ids for
vocabularies below 65536 and int32 otherwise, so files from
`python -m llmx.data.preprocess` load in Megatron and PaddleNLP unchanged and
theirs load here. The .bin is memory-mapped, never read whole. Every problem
with the files raises `DataError` with one line naming the file.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from llmx.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, doc_idx entries
HEADER_SIZE = HEADER.size  # 34

# Codes 1-8 are shared by Megatron-LM and PaddleNLP; 9 and 10 only PaddleNLP reads.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
    9: np.dtype(np.uint32),
    10: np.dtype(np.uint64),
}
# What IndexedWriter writes: integer dtypes every reader (Megatron included) knows.
WRITABLE = {np.dtype(t): c for c, t in DTYPE_CODES.items() if c <= 8 and np.dtype(t).kind in "iu"}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id (0 .. vocab_size-1) fits in it, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


def _paths(prefix: str | Path) -> tuple[str, str]:
    prefix = os.fspath(prefix)
    for ext in (".bin", ".idx"):  # accept "data/x.bin" as well as "data/x"
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix + ".idx", prefix + ".bin"


class IndexedDataset:
    """Read-only view of `<prefix>.idx` + `<prefix>.bin`; `ds[i]` is sequence i's ids.

    Arrays returned are read-only views into the memory-mapped .bin (copy them to
    modify). Pickles by path, so DataLoader workers reopen the files themselves.
    """

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = os.fspath(prefix)
        self.idx_path, self.bin_path = _paths(prefix)
        self._open()

    def _open(self) -> None:
        idx_path, bin_path = self.idx_path, self.bin_path
        if not os.path.isfile(idx_path):
            old = self.idx_path[: -len(".idx")]
            if os.path.isfile(old + "_ids.npy") and os.path.isfile(old + "_idx.npz"):
                raise DataError(f"{idx_path}: missing index file; found {old}_ids.npy/_idx.npz, PaddleNLP's old "
                                "format, which llmx does not read (re-run python -m llmx.data.preprocess on the text)")
            raise DataError(f"{idx_path}: missing index file (a dataset is <prefix>.idx + <prefix>.bin)")
        if not os.path.isfile(bin_path):
            raise DataError(f"{bin_path}: missing data file (a dataset is <prefix>.idx + <prefix>.bin)")

        idx_bytes = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            head = f.read(HEADER_SIZE)
        if head[:len(MAGIC)] != MAGIC[:len(head)]:  # a short file that is a prefix of MAGIC is "truncated"
            if head[:8] == b"TNTIDX\x00\x00":
                raise DataError(f"{idx_path}: a 'lazy' TNTIDX index, not MMIDIDX; only the mmap (MMIDIDX) layout "
                                "is supported (re-run python -m llmx.data.preprocess)")
            raise DataError(f"{idx_path}: not an MMIDIDX index (starts with {head[:9]!r}, expected {MAGIC!r})")
        if len(head) < HEADER_SIZE:
            raise DataError(f"{idx_path}: truncated index: {idx_bytes} bytes, "
                            f"shorter than the {HEADER_SIZE}-byte header")
        _, version, code, count, doc_count = HEADER.unpack(head)
        if version != VERSION:
            raise DataError(f"{idx_path}: unsupported index version {version} (only version {VERSION} exists)")
        if code not in DTYPE_CODES:
            raise DataError(f"{idx_path}: unknown dtype code {code} (known: "
                            + ", ".join(f"{c}={t.name}" for c, t in DTYPE_CODES.items()) + ")")
        needed = HEADER_SIZE + 4 * count + 8 * count + 8 * doc_count
        if idx_bytes < needed:
            raise DataError(f"{idx_path}: truncated index: {idx_bytes} bytes, but the header ({count} sequences, "
                            f"{doc_count} doc_idx entries) needs {needed}")
        if count == 0:
            raise DataError(f"{idx_path}: empty dataset (0 sequences)")

        self._dtype = DTYPE_CODES[code]
        index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        self._sizes = np.frombuffer(index, dtype="<i4", count=count, offset=HEADER_SIZE)
        self._pointers = np.frombuffer(index, dtype="<i8", count=count, offset=HEADER_SIZE + 4 * count)
        self._doc_idx = np.frombuffer(index, dtype="<i8", count=doc_count, offset=HEADER_SIZE + 12 * count)
        if doc_count < 2 or self._doc_idx[0] != 0 or self._doc_idx[-1] != count:
            first_last = f"{self._doc_idx[0]} .. {self._doc_idx[-1]}" if doc_count else "nothing"
            raise DataError(f"{idx_path}: bad doc_idx: holds {first_last}, expected 0 .. {count} (the sequence count)")

        end = int(self._pointers[-1]) + int(self._sizes[-1]) * self._dtype.itemsize
        bin_bytes = os.path.getsize(bin_path)
        if bin_bytes < end:
            raise DataError(f"{bin_path}: truncated data file: {bin_bytes} bytes, but the index's last sequence "
                            f"ends at byte {end}")
        # numpy cannot map an empty file; a dataset of only empty sequences needs no mapping.
        self._bin = np.memmap(bin_path, dtype=np.uint8, mode="r") if bin_bytes else np.zeros(0, np.uint8)

    # ---- pickling by path (a memmap would pickle its whole contents)
    def __getstate__(self) -> dict:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.prefix = state["prefix"]
        self.idx_path, self.bin_path = _paths(self.prefix)
        self._open()

    # ---- access
    def __len__(self) -> int:
        return len(self._sizes)

    def _check(self, i) -> int:
        n = len(self._sizes)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences in {self.prefix}")
        return i

    def __getitem__(self, i) -> np.ndarray:
        i = self._check(i)
        return np.frombuffer(self._bin, dtype=self._dtype, count=int(self._sizes[i]), offset=int(self._pointers[i]))

    def get(self, i, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i (to its end when length is None)."""
        i = self._check(i)
        size = int(self._sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens [{offset}, {offset + length}) out of range for sequence {i} of "
                             f"{size} tokens in {self.prefix}")
        start = int(self._pointers[i]) + offset * self._dtype.itemsize
        return np.frombuffer(self._bin, dtype=self._dtype, count=length, offset=start)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per sequence (int32)."""
        return self._sizes

    @property
    def pointers(self) -> np.ndarray:
        """Byte offset of each sequence in the .bin (int64)."""
        return self._pointers

    @property
    def doc_idx(self) -> np.ndarray:
        """Sequence index where each document starts, then len(self) (int64)."""
        return self._doc_idx

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def num_tokens(self) -> int:
        return int(self._sizes.sum(dtype=np.int64))

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, sequences={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


class IndexedWriter:
    """Write `<prefix>.bin` + `<prefix>.idx`, one sequence per document.

        with IndexedWriter("data/corpus", dtype_for_vocab(len(tokenizer))) as w:
            for ids in documents:
                w.add_document(ids)

    Data goes to temporary files; only a block that exits without an exception
    renames them into place (an existing .idx is removed first, so a crash never
    pairs a new .bin with an old .idx). Writing no document at all is an error.
    """

    def __init__(self, prefix: str | Path, dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in WRITABLE:
            raise ValueError(f"IndexedWriter: dtype {self.dtype} is not one of "
                             + ", ".join(sorted(t.name for t in WRITABLE)))
        self.idx_path, self.bin_path = _paths(prefix)
        self.prefix = self.idx_path[: -len(".idx")]
        self._limits = np.iinfo(self.dtype)
        self._sizes: list[int] = []
        self._file = None
        self.num_tokens = 0

    def _tmp(self, path: str) -> str:
        return f"{path}.tmp{os.getpid()}"

    def __enter__(self) -> "IndexedWriter":
        Path(self.bin_path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp(self.bin_path), "wb")
        return self

    def add_document(self, token_ids) -> None:
        if self._file is None:
            raise RuntimeError("IndexedWriter.add_document outside its `with` block")
        ids = np.asarray(token_ids)
        if ids.ndim != 1:
            raise ValueError(f"add_document expects a 1-D sequence of token ids, got shape {ids.shape}")
        if ids.size:
            if ids.dtype.kind not in "iu":
                raise ValueError(f"add_document expects integer token ids, got {ids.dtype}")
            lo, hi = ids.min(), ids.max()
            if lo < self._limits.min or hi > self._limits.max:
                bad = lo if lo < self._limits.min else hi
                raise DataError(f"{self.bin_path}: token id {bad} does not fit {self.dtype.name} "
                                f"({self._limits.min}..{self._limits.max}); use int32 for vocabularies >= 65536")
        self._file.write(ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._sizes.append(int(ids.size))
        self.num_tokens += int(ids.size)

    @property
    def num_documents(self) -> int:
        return len(self._sizes)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        tmp_bin, tmp_idx = self._tmp(self.bin_path), self._tmp(self.idx_path)
        try:
            if exc_type is not None:
                return
            if not self._sizes:
                raise DataError(f"{self.bin_path}: no documents to write (empty dataset)")
            if max(self._sizes) > np.iinfo(np.int32).max:
                raise DataError(f"{self.bin_path}: a document has more than 2**31-1 tokens (sizes are int32)")
            sizes = np.asarray(self._sizes, dtype="<i4")
            pointers = np.zeros(len(sizes), dtype="<i8")
            np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
            pointers *= self.dtype.itemsize
            doc_idx = np.arange(len(sizes) + 1, dtype="<i8")
            with open(tmp_idx, "wb") as f:
                f.write(HEADER.pack(MAGIC, VERSION, WRITABLE[self.dtype], len(sizes), len(doc_idx)))
                f.write(sizes.tobytes())
                f.write(pointers.tobytes())
                f.write(doc_idx.tobytes())
            if os.path.exists(self.idx_path):
                os.remove(self.idx_path)
            os.replace(tmp_bin, self.bin_path)
            os.replace(tmp_idx, self.idx_path)
        finally:
            for path in (tmp_bin, tmp_idx):
                if os.path.exists(path):
                    os.remove(path)
