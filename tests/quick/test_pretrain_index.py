"""Pretraining data: the sample index (split, blend, cache) and one-line errors for bad data."""
from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import config_error, input_error

from llmx.data.indexed import IndexedWriter
from llmx.data.pretrain import load_pretrain_splits, parse_split
from llmx.errors import DataError


def _write(prefix, docs, dtype=np.uint16):
    with IndexedWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
    return str(prefix)


@pytest.fixture
def two_sets(tmp_path):
    """Document d of `a` is the token d repeated, of `b` the token 1000+d: every token tells its source."""
    rng = np.random.RandomState(0)
    lengths = rng.randint(5, 60, size=200)
    a = _write(tmp_path / "a", [np.full(n, d) for d, n in enumerate(lengths)])
    b = _write(tmp_path / "b", [np.full(n, 1000 + d) for d, n in enumerate(lengths)])
    return a, b, lengths


def test_samples_are_windows_of_whole_documents(two_sets, tmp_path):
    a, _, lengths = two_sets
    splits, _ = load_pretrain_splits([a], None, "8,2,0", 16, seed=1, num_samples={"train": 300, "valid": 20},
                                     cache_dir=tmp_path / "cache")
    train, valid = splits["train"], splits["valid"]
    assert len(train) == 300 and len(valid) == 20
    for i in range(300):
        item, tokens = train[i], train.tokens(i)
        assert len(tokens) == 17 and np.array_equal(item["input_ids"], tokens[:-1]) and np.array_equal(item["labels"], tokens[1:])
        assert set(tokens.tolist()) <= set(range(160)), "train samples use the first 80% of documents only"
        runs = np.split(tokens, np.flatnonzero(np.diff(tokens)) + 1)
        assert all(len(r) == lengths[r[0]] for r in runs[1:-1]), "inner documents appear whole"
    assert {int(t) for i in range(20) for t in valid.tokens(i)} <= set(range(160, 200))


def test_blending_follows_weights(two_sets, tmp_path):
    a, b, _ = two_sets
    splits, _ = load_pretrain_splits([a, b], [0.75, 0.25], "1", 8, seed=0, num_samples={"train": 400},
                                     cache_dir=tmp_path / "cache")
    from_a = sum(int(splits["train"].tokens(i)[0]) < 1000 for i in range(400))
    assert from_a == 300


def test_index_cache_reused_and_rebuilt_when_inputs_change(two_sets, tmp_path):
    a, _, _ = two_sets
    cache = tmp_path / "cache"
    kwargs = dict(weights=None, split="9,1", seed=3, num_samples={"train": 50}, cache_dir=cache)
    first, info1 = load_pretrain_splits([a], seq_length=16, **kwargs)
    again, info2 = load_pretrain_splits([a], seq_length=16, **kwargs)
    assert not info1["reused"] and info2["reused"] and info1["path"] == info2["path"]
    assert all(np.array_equal(first["train"].tokens(i), again["train"].tokens(i)) for i in range(50))
    _, info3 = load_pretrain_splits([a], seq_length=32, **kwargs)
    assert not info3["reused"] and info3["path"] != info1["path"]
    _write(a, [np.arange(1, 40) for _ in range(50)])  # the data changed
    os.utime(a + ".idx", ns=(1, 1))
    _, info4 = load_pretrain_splits([a], seq_length=16, **kwargs)
    assert not info4["reused"] and info4["path"] != info1["path"]


def test_bad_split_and_empty_split(two_sets, tmp_path):
    a, _, _ = two_sets
    with pytest.raises(DataError, match="expected up to 3"):
        parse_split("9,x")
    with pytest.raises(DataError, match="the valid split is empty"):
        load_pretrain_splits([a], None, "1,0,0", 8, 0, {"train": 5, "valid": 5}, cache_dir=tmp_path)


def test_pretrain_bad_data_is_one_line(tmp_path):
    line = input_error("stage=pretrain", f"stage.data.paths=[{tmp_path}/nope]")
    assert line == f"llmx: config error: stage.data.paths[0]='{tmp_path}/nope.bin': no such file (local paths only: llmx never downloads)"
    (tmp_path / "bad.bin").write_bytes(b"\0" * 10)
    (tmp_path / "bad.idx").write_bytes(b"NOTMMIDX" + b"\0" * 40)
    line = config_error("stage=pretrain", f"stage.data.paths=[{tmp_path}/bad]", tmp_path=tmp_path)  # a real launch
    assert line.startswith(f"llmx: data error: {tmp_path}/bad.idx: not an MMIDIDX index")
    line = input_error("stage=pretrain", "stage.continue_training=true")
    assert "stage.continue_training=True: needs model.name_or_path" in line
