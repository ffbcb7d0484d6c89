"""Pretraining samples from indexed (.bin/.idx) data: split, shuffle, blend, cache.

Each split (train/valid/test) of each dataset takes a contiguous range of its
documents (`split="949,50,1"`). A split's documents are shuffled per epoch and
concatenated into one token stream; sample j is tokens [j*L, (j+1)*L] of that
stream (L = seq_length; the extra token is the last label). Samples are then
shuffled, and several datasets are blended by weight, always drawing from the
dataset furthest below its share. All of this is the "sample index": built
with numpy, cached as one .npz per (data files, seq_length, seed, split,
weights, sample counts) in `index-cache/` next to the data, reused while the
files are unchanged. Imports no paddle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from llmx.errors import DataError
from llmx.data.indexed import IndexedDataset

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1


def parse_split(split: str) -> list[float]:
    """'949,50,1' -> fractions summing to 1 (missing parts are 0)."""
    try:
        parts = [float(x) for x in str(split).split(",")]
    except ValueError:
        raise DataError(f"stage.data.split={split!r}: expected up to 3 comma-separated numbers, e.g. 949,50,1") from None
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DataError(f"stage.data.split={split!r}: expected up to 3 non-negative numbers with a positive sum")
    parts += [0.0] * (3 - len(parts))
    return [p / sum(parts) for p in parts]


def split_ranges(num_docs: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
    bounds = np.round(np.cumsum([0.0, *fractions]) * num_docs).astype(int)
    return {name: (int(bounds[i]), int(bounds[i + 1])) for i, name in enumerate(SPLITS)}


def doc_lengths(ds: IndexedDataset) -> np.ndarray:
    """Tokens per document (a document may span several sequences)."""
    cum = np.concatenate([[0], np.cumsum(ds.sizes, dtype=np.int64)])
    return cum[ds.doc_idx[1:]] - cum[ds.doc_idx[:-1]]


def build_split_index(lengths: np.ndarray, docs: tuple[int, int], seq_length: int, num_samples: int,
                      rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """Document order, sample boundaries and sample shuffle for one split of one dataset."""
    start, end = docs
    tokens_per_epoch = int(lengths[start:end].sum())
    if tokens_per_epoch <= 0:
        raise DataError(f"a data split has no tokens (documents {start}..{end})")
    epochs = -(-(num_samples * seq_length + 1) // tokens_per_epoch)
    doc_order = np.concatenate([rng.permutation(np.arange(start, end)) for _ in range(epochs)])
    cum = np.concatenate([[0], np.cumsum(lengths[doc_order], dtype=np.int64)])
    boundaries = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    pos = np.searchsorted(cum, boundaries, side="right") - 1
    return {"doc_order": doc_order, "sample_doc": pos, "sample_offset": boundaries - cum[pos],
            "shuffle": rng.permutation(num_samples)}


def blend_index(weights: Sequence[float], num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """For each blended sample: which dataset, and which of that dataset's samples.
    Greedy: always draw from the dataset furthest below weight * samples so far."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    counts = np.zeros(len(w), dtype=np.int64)
    which = np.empty(num_samples, dtype=np.int64)
    local = np.empty(num_samples, dtype=np.int64)
    for i in range(num_samples):  # O(samples * datasets); fine for the sizes one run consumes
        k = int(np.argmax(w * (i + 1) - counts))
        which[i], local[i] = k, counts[k]
        counts[k] += 1
    return which, local


@dataclass
class PretrainSplit:
    """Samples of one split, blended over datasets. Items are {"input_ids", "labels"} of seq_length."""

    datasets: list[IndexedDataset]
    seq_length: int
    index: dict[str, np.ndarray]  # per dataset k: k/doc_order, k/sample_doc, k/sample_offset, k/shuffle; which, local
    name: str

    def __len__(self) -> int:
        return len(self.index["which"])

    def target_token_counts(self) -> np.ndarray:
        """Every position of a sample learns the next token."""
        return np.full(len(self), self.seq_length, dtype=np.int64)

    def _doc_tokens(self, ds: IndexedDataset, doc: int) -> np.ndarray:
        first, last = ds.doc_idx[doc], ds.doc_idx[doc + 1]
        return ds[first] if last == first + 1 else np.concatenate([ds[s] for s in range(first, last)])

    def tokens(self, i: int) -> np.ndarray:
        k = int(self.index["which"][i])
        ds, j = self.datasets[k], int(self.index[f"{k}/shuffle"][self.index["local"][i]])
        order, pos, off = self.index[f"{k}/doc_order"], self.index[f"{k}/sample_doc"], self.index[f"{k}/sample_offset"]
        need, p, o = self.seq_length + 1, int(pos[j]), int(off[j])
        pieces = []
        while need > 0:
            doc = self._doc_tokens(ds, int(order[p]))[o:o + need]
            pieces.append(doc)
            need -= len(doc)
            p, o = p + 1, 0
        return np.concatenate(pieces).astype(np.int64)

    def __getitem__(self, i: int) -> dict:
        t = self.tokens(i)
        return {"input_ids": t[:-1], "labels": t[1:]}


def _fingerprint(path: str) -> list:
    """Identity of a data file that changes when it is rewritten."""
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def cache_key(prefixes: Sequence[str], **params) -> str:
    files = [_fingerprint(f"{p}{ext}") for p in prefixes for ext in (".idx", ".bin")]
    blob = json.dumps({"version": CACHE_VERSION, "files": files, **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir(prefixes: Sequence[str]) -> Path:
    """`index-cache/` next to the first dataset, or the user cache when that is read-only."""
    beside = Path(prefixes[0]).resolve().parent / "index-cache"
    try:
        beside.mkdir(parents=True, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmx" / "index-cache"


def load_pretrain_splits(prefixes: Sequence[str], weights: Optional[Sequence[float]], split: str, seq_length: int,
                         seed: int, num_samples: dict[str, int], cache_dir: Optional[str] = None) -> tuple[dict, dict]:
    """Splits with at least one sample requested -> PretrainSplit; plus cache info
    {"path", "reused"} so callers (and tests) can tell whether the index was rebuilt."""
    prefixes = [str(p)[:-4] if str(p).endswith((".bin", ".idx")) else str(p) for p in prefixes]
    if weights is not None and len(weights) != len(prefixes):
        raise DataError(f"stage.data.weights has {len(weights)} entries but stage.data.paths has {len(prefixes)}")
    weights = list(weights) if weights is not None else [1.0] * len(prefixes)
    datasets = [IndexedDataset(p) for p in prefixes]
    fractions = parse_split(split)
    wanted = {s: n for s, n in num_samples.items() if n > 0}
    key = cache_key(prefixes, weights=weights, split=fractions, seq_length=seq_length, seed=seed, samples=wanted)
    cache = Path(cache_dir) if cache_dir else default_cache_dir(prefixes)
    path = cache / f"{key}.npz"
    reused = path.exists()
    if reused:
        with np.load(path) as f:
            arrays = dict(f)
        log.info("sample index: reused %s", path)
    else:
        arrays = _build(datasets, prefixes, weights, fractions, seq_length, seed, wanted)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        log.info("sample index: built %s", path)
    splits = {}
    for s in wanted:
        index = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{s}/")}
        splits[s] = PretrainSplit(datasets, seq_length, index, s)
    return splits, {"path": str(path), "reused": reused}


def _build(datasets, prefixes, weights, fractions, seq_length, seed, wanted) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    lengths = [doc_lengths(ds) for ds in datasets]
    for s_i, (s, n) in enumerate(wanted.items()):
        which, local = blend_index(weights, n)
        arrays[f"{s}/which"], arrays[f"{s}/local"] = which, local
        for k, (ds_lengths, prefix) in enumerate(zip(lengths, prefixes)):
            need = int((which == k).sum())
            if need == 0:
                continue
            docs = split_ranges(len(ds_lengths), fractions)[s]
            if docs[1] <= docs[0]:
                raise DataError(f"{prefix}: the {s} split is empty ({len(ds_lengths)} documents, split {fractions})")
            rng = np.random.RandomState((seed * 1009 + k * 101 + s_i) % (2**32))
            for name, arr in build_split_index(ds_lengths, docs, seq_length, need, rng).items():
                arrays[f"{s}/{k}/{name}"] = arr
    return arrays
