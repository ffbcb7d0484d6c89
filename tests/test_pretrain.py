"""Pretraining: the sample index (split, blend, cache) and end-to-end runs on the bundled data."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import FAST, launch, read_json, read_jsonl
from helpers import config_error
from llmx.config import DataError
from llmx.data.indexed import IndexedWriter
from llmx.data.pretrain import load_pretrain_splits, parse_split


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


PRETRAIN = ["stage=pretrain", *FAST, "stage.train.max_steps=40", "stage.train.logging_steps=5",
            "stage.train.save_steps=20", "stage.eval.samples=64"]


def test_pretrain_learns_checkpoints_resumes_and_continues(tmp_path):
    run = tmp_path / "run"
    launch(f"hydra.run.dir={run}", *PRETRAIN)
    summary = read_json(run / "summary.json")
    assert summary["eval_loss"] < summary["eval_loss_before"] - 1.0, summary
    assert summary["train_samples"] == 40 * 16 and summary["index_cache"] in ("built", "reused")
    losses = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in losses] == list(range(5, 41, 5))

    # resume after losing the last checkpoint: the same losses as the uninterrupted run
    shutil.rmtree(run / "checkpoints/step-40")
    (run / "checkpoints/latest").write_text("step-20\n")
    launch(f"hydra.run.dir={run}", *PRETRAIN)
    resumed = read_json(run / "summary.json")
    assert resumed["resumed_from"] == "step-20" and resumed["index_cache"] == "reused"
    again = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in again] == [s for s, _ in losses]
    assert np.allclose([x for _, x in again], [x for _, x in losses], atol=1e-6)

    # continue training from the exported weights: it starts where the first run ended
    cont = tmp_path / "continued"
    launch(f"hydra.run.dir={cont}", *PRETRAIN, "stage.train.max_steps=5", f"model.name_or_path={run / 'model'}",
           "stage.continue_training=true")
    assert read_json(cont / "summary.json")["eval_loss_before"] == pytest.approx(summary["eval_loss"], rel=1e-5)


def test_pretrain_bad_data_is_one_line(tmp_path):
    line = config_error("stage=pretrain", f"stage.data.paths=[{tmp_path}/nope]", tmp_path=tmp_path)
    assert line == f"llmx: config error: stage.data.paths[0]='{tmp_path}/nope.bin': no such file (local paths only: llmx never downloads)"
    (tmp_path / "bad.bin").write_bytes(b"\0" * 10)
    (tmp_path / "bad.idx").write_bytes(b"NOTMMIDX" + b"\0" * 40)
    line = config_error("stage=pretrain", f"stage.data.paths=[{tmp_path}/bad]", tmp_path=tmp_path)
    assert line.startswith(f"llmx: data error: {tmp_path}/bad.idx: not an MMIDIDX index")
    line = config_error("stage=pretrain", "stage.continue_training=true", tmp_path=tmp_path)
    assert "stage.continue_training=True: needs model.name_or_path" in line
