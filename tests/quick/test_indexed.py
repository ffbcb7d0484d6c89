"""The MMIDIDX indexed layout: round trips, interchange with independent readers/writers, bad files."""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from llmx.errors import DataError
from llmx.data.indexed import IndexedDataset, IndexedWriter, dtype_for_vocab

# The published layout, restated here independently of llmx.data.indexed.
CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def _docs(rng: np.random.Generator, n: int, high: int) -> list[np.ndarray]:
    docs = [rng.integers(0, high, size=int(rng.integers(1, 50))) for _ in range(n)]
    docs[n // 2] = np.zeros(0, dtype=np.int64)  # an empty document is legal
    return docs


def _write(prefix, docs, dtype) -> None:
    with IndexedWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)


def independent_write(prefix, sequences, dtype, doc_idx=None, code=None, magic=b"MMIDIDX\x00\x00", version=1):
    """A minimal writer straight from the published layout (not llmx's writer)."""
    dtype = np.dtype(dtype)
    code = code if code is not None else {np.dtype(v): k for k, v in CODES.items()}[dtype]
    doc_idx = list(range(len(sequences) + 1)) if doc_idx is None else doc_idx
    sizes = [len(s) for s in sequences]
    pointers, pos = [], 0
    for n in sizes:
        pointers.append(pos)
        pos += n * dtype.itemsize
    with open(f"{prefix}.bin", "wb") as f:
        for s in sequences:
            f.write(np.asarray(s, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(magic)
        f.write(struct.pack("<Q", version))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(struct.pack(f"<{len(sizes)}i", *sizes))
        f.write(struct.pack(f"<{len(pointers)}q", *pointers))
        f.write(struct.pack(f"<{len(doc_idx)}q", *doc_idx))


def independent_read(prefix) -> tuple[list[np.ndarray], list[int]]:
    """A minimal reader straight from the published layout (not llmx's reader)."""
    idx = open(f"{prefix}.idx", "rb").read()
    data = open(f"{prefix}.bin", "rb").read()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack_from("<Q", idx, 9)
    (code,) = struct.unpack_from("<B", idx, 17)
    count, doc_count = struct.unpack_from("<QQ", idx, 18)
    assert version == 1
    sizes = struct.unpack_from(f"<{count}i", idx, 34)
    pointers = struct.unpack_from(f"<{count}q", idx, 34 + 4 * count)
    doc_idx = struct.unpack_from(f"<{doc_count}q", idx, 34 + 12 * count)
    dtype = np.dtype(CODES[code])
    seqs = [np.frombuffer(data, dtype=dtype, count=n, offset=p) for n, p in zip(sizes, pointers)]
    return seqs, list(doc_idx)


@pytest.mark.parametrize("dtype, high", [(np.uint16, 65536), (np.int32, 200_000)])
def test_round_trip(tmp_path, dtype, high):
    docs = _docs(np.random.default_rng(0), 300, high)
    if dtype == np.int32:
        docs[0] = np.array([65535, 65536, 70000, 199_999])  # ids a uint16 file could not hold
    _write(tmp_path / "c", docs, dtype)
    ds = IndexedDataset(tmp_path / "c")
    assert len(ds) == 300 and ds.dtype == np.dtype(dtype)
    for i, d in enumerate(docs):
        got = ds[i]
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, d), i
    assert ds.sizes.dtype == np.int32 and list(ds.sizes) == [len(d) for d in docs]
    assert ds.doc_idx.dtype == np.int64 and list(ds.doc_idx) == list(range(301))
    assert ds.num_tokens == sum(len(d) for d in docs) and isinstance(ds.num_tokens, int)
    assert np.array_equal(ds[-1], docs[-1])
    assert np.array_equal(ds.get(1, 2, 3), docs[1][2:5])
    assert np.array_equal(ds.get(1, 2), docs[1][2:])
    assert np.array_equal(ds.get(1), docs[1])
    with pytest.raises(IndexError):
        ds[300]
    with pytest.raises(IndexError):
        ds.get(1, len(docs[1]) - 1, 2)
    # prefix may also be given with the .bin suffix, and the dataset pickles by path
    assert len(IndexedDataset(str(tmp_path / "c.bin"))) == 300
    again = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 1000 and np.array_equal(again[7], docs[7])


def test_dtype_for_vocab():
    assert dtype_for_vocab(512) == np.uint16 and dtype_for_vocab(65535) == np.uint16
    assert dtype_for_vocab(65536) == np.int32 and dtype_for_vocab(151_936) == np.int32


def test_reads_a_file_written_from_the_published_layout(tmp_path):
    # Two sequences per document (as Megatron writes when it splits sentences), int32 ids.
    seqs = [[5, 6, 7], [100_000], [1, 2], [], [9] * 40]
    independent_write(tmp_path / "m", seqs, np.int32, doc_idx=[0, 2, 4, 5])
    ds = IndexedDataset(tmp_path / "m")
    assert [ds[i].tolist() for i in range(len(ds))] == seqs
    assert ds.doc_idx.tolist() == [0, 2, 4, 5] and ds.dtype == np.int32 and ds.num_tokens == 46
    independent_write(tmp_path / "u", seqs[2:], np.uint16)
    assert [x.tolist() for x in IndexedDataset(tmp_path / "u")] == seqs[2:]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_independent_reader_reads_ours(tmp_path, dtype):
    docs = _docs(np.random.default_rng(1), 50, 60_000)
    _write(tmp_path / "c", docs, dtype)
    seqs, doc_idx = independent_read(tmp_path / "c")
    assert doc_idx == list(range(51))
    assert all(np.array_equal(s, d) and s.dtype == np.dtype(dtype) for s, d in zip(seqs, docs))


def test_paddlenlp_reader_reads_ours(tmp_path):
    mod = pytest.importorskip("paddlenlp.data.indexed_dataset")
    docs = _docs(np.random.default_rng(2), 40, 512)
    _write(tmp_path / "c", docs, np.uint16)
    theirs = mod.MMapIndexedDataset(str(tmp_path / "c"), skip_warmup=True)
    assert len(theirs) == 40 and theirs.doc_idx.tolist() == list(range(41))
    assert all(np.array_equal(theirs[i], d) for i, d in enumerate(docs))
    # What PaddleNLP's pretraining data builder asserts before using a dataset:
    assert theirs.sizes.shape[0] == theirs.doc_idx[-1]


def test_writer_refuses_ids_that_do_not_fit(tmp_path):
    with pytest.raises(DataError, match="token id 70000 does not fit uint16"):
        _write(tmp_path / "c", [[1, 2], [70000]], np.uint16)
    assert os.listdir(tmp_path) == []  # nothing left behind, not even temp files


def test_writer_leaves_nothing_after_an_exception_and_keeps_the_old_pair(tmp_path):
    _write(tmp_path / "c", [[1, 2, 3]], np.uint16)
    before = {p: (tmp_path / p).read_bytes() for p in ("c.bin", "c.idx")}
    with pytest.raises(RuntimeError):
        with IndexedWriter(tmp_path / "c", np.uint16) as w:
            w.add_document([4, 5])
            raise RuntimeError("crash")
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.idx"]
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    _write(tmp_path / "c", [[7], [8, 9]], np.uint16)  # a successful rewrite replaces both
    assert [x.tolist() for x in IndexedDataset(tmp_path / "c")] == [[7], [8, 9]]


def test_writer_with_no_documents_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no documents"):
        _write(tmp_path / "c", [], np.uint16)
    assert os.listdir(tmp_path) == []


def _one_line_error(prefix) -> str:
    with pytest.raises(DataError) as err:
        IndexedDataset(prefix)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def good(tmp_path):
    _write(tmp_path / "c", [[1, 2, 3], [4, 5], [6]], np.uint16)
    return tmp_path / "c"


def _patch(path, offset, data: bytes):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_missing_files(good):
    os.remove(f"{good}.bin")
    assert _one_line_error(good).startswith(f"{good}.bin: missing data file")
    os.remove(f"{good}.idx")
    assert _one_line_error(good).startswith(f"{good}.idx: missing index file")


def test_wrong_magic(good):
    _patch(good.with_suffix(".idx"), 0, b"XXIDIDX\x00\x00")
    assert _one_line_error(good).startswith(f"{good}.idx: not an MMIDIDX index")


def test_old_lazy_index_is_named(good):
    _patch(good.with_suffix(".idx"), 0, b"TNTIDX\x00\x00")
    assert "'lazy' TNTIDX index" in _one_line_error(good)


def test_unsupported_version(good):
    _patch(good.with_suffix(".idx"), 9, struct.pack("<Q", 2))
    assert _one_line_error(good) == f"{good}.idx: unsupported index version 2 (only version 1 exists)"


def test_unknown_dtype_code(good):
    _patch(good.with_suffix(".idx"), 17, struct.pack("<B", 42))
    assert _one_line_error(good).startswith(f"{good}.idx: unknown dtype code 42")


@pytest.mark.parametrize("keep", [0, 5, 20, 34, 34 + 12, -1])
def test_truncated_index(good, keep):
    idx = good.with_suffix(".idx")
    raw = idx.read_bytes()
    idx.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    assert _one_line_error(good).startswith(f"{good}.idx: truncated index")


def test_truncated_data(good):
    binf = good.with_suffix(".bin")
    binf.write_bytes(binf.read_bytes()[:-2])
    assert _one_line_error(good) == (f"{good}.bin: truncated data file: 10 bytes, but the index's last sequence "
                                     "ends at byte 12")


def test_empty_dataset(tmp_path):
    independent_write(tmp_path / "e", [], np.uint16, doc_idx=[0])
    assert _one_line_error(tmp_path / "e") == f"{tmp_path / 'e'}.idx: empty dataset (0 sequences)"


def test_bad_doc_idx(tmp_path):
    independent_write(tmp_path / "d", [[1], [2]], np.uint16, doc_idx=[0, 1])
    assert "bad doc_idx" in _one_line_error(tmp_path / "d")


def test_old_npy_npz_format_is_named(tmp_path):
    np.save(tmp_path / "old_ids.npy", np.arange(4))
    np.savez(tmp_path / "old_idx.npz", lens=np.array([4]), docs=np.array([0, 1]))
    assert "PaddleNLP's old format" in _one_line_error(tmp_path / "old")
