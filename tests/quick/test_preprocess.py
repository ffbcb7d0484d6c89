"""`python -m llmx.data.preprocess`: inputs, tokenization, workers, errors, the CLI, the bundled data."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from llmx.errors import DataError
from llmx.schema import asset_path
from llmx.data.indexed import IndexedDataset
from llmx.data.preprocess import CHUNK_DOCS, preprocess, read_documents

TEXTS = ["The cat sees 12 dogs.", "add 3 + 4 = 7\nreverse: bird drib", "", "naïve café 北京", "  two  spaces "]
CLI = [sys.executable, "-m", "llmx.data.preprocess"]


@pytest.fixture(scope="module")
def tokenizer():
    from paddlenlp.transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))


def _ids(tokenizer, text, eos=True):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if eos else ids


def _jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t, "meta": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def _read(prefix) -> list[list[int]]:
    return [x.tolist() for x in IndexedDataset(prefix)]


@pytest.mark.parametrize("append_eos", [True, False])
def test_jsonl_round_trip(tmp_path, tokenizer, append_eos):
    stats = preprocess([_jsonl(tmp_path / "c.jsonl", TEXTS)], tmp_path / "out" / "c", tokenizer, append_eos=append_eos)
    got = _read(tmp_path / "out" / "c")
    assert got == [_ids(tokenizer, t, append_eos) for t in TEXTS]
    assert IndexedDataset(tmp_path / "out" / "c").dtype == np.uint16
    assert (stats.documents, stats.tokens) == (len(TEXTS), sum(map(len, got)))
    assert tokenizer.bos_token_id not in {i for ids in got for i in ids}


def test_plain_text_gzip_multiple_inputs_and_max_docs(tmp_path, tokenizer):
    # Plain text: documents are separated by one or more blank (or whitespace-only) lines.
    (tmp_path / "a.txt").write_text("first doc\nsecond line\n\n\n  \nsecond doc\n\nthird doc", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("gz text doc\r\n\r\nanother\r\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"body": "gz json doc"}) + "\n\n" + json.dumps({"body": "last"}) + "\n")
    inputs = [tmp_path / "a.txt", tmp_path / "b.txt.gz", tmp_path / "c.jsonl.gz"]
    expected = ["first doc\nsecond line", "second doc", "third doc", "gz text doc", "another", "gz json doc", "last"]
    assert list(read_documents(inputs, text_key="body")) == expected
    stats = preprocess(inputs, tmp_path / "o", tokenizer, text_key="body")
    assert _read(tmp_path / "o") == [_ids(tokenizer, t) for t in expected] and stats.documents == 7
    preprocess(inputs, tmp_path / "m", tokenizer, text_key="body", max_docs=4)
    assert _read(tmp_path / "m") == [_ids(tokenizer, t) for t in expected[:4]]


def test_workers_give_byte_identical_files(tmp_path, tokenizer):
    texts = [f"The {w} sees {i} dogs and {i % 7} cats. " * (1 + i % 5) for i, w in
             enumerate(["cat", "dog", "owl", "bee"] * 160)]
    assert len(texts) > 4 * CHUNK_DOCS  # several chunks, so ordering across workers matters
    src = _jsonl(tmp_path / "c.jsonl", texts)
    preprocess([src], tmp_path / "w1", tokenizer, workers=1)
    preprocess([src], tmp_path / "w2", tokenizer, workers=2)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1{ext}").read_bytes() == (tmp_path / f"w2{ext}").read_bytes()
    assert _read(tmp_path / "w2")[-1] == _ids(tokenizer, texts[-1])


@pytest.mark.parametrize("content, reason", [
    ('{"text": "ok"}\n{"txt": "no"}\n', ":2: no key 'text'"),
    ('{"text": "ok"}\n\n{"text": \n', ":3: invalid JSON (Expecting value at column 10)"),
    ('{"text": "ok"}\n["text"]\n', ":2: expected a JSON object with key 'text', got list"),
    ('{"text": 5}\n', ":1: 'text' is int, expected a string"),
    ("\n\n", ": no documents"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, tokenizer, content, reason):
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    with pytest.raises(DataError) as err:
        preprocess([src], tmp_path / "out", tokenizer)
    assert str(err.value) == f"{src}{reason}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no output, no temp files


def test_bad_gzip_and_bad_utf8(tmp_path, tokenizer):
    (tmp_path / "x.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"x\.jsonl\.gz: not a readable gzip file"):
        preprocess([tmp_path / "x.jsonl.gz"], tmp_path / "o", tokenizer)
    (tmp_path / "y.txt").write_bytes(b"fine\n\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"y\.txt: not valid UTF-8"):
        preprocess([tmp_path / "y.txt"], tmp_path / "o", tokenizer)


def test_cli_argument_errors_exit_2_before_loading_paddle(tmp_path):
    missing = tmp_path / "nope.jsonl"
    proc = subprocess.run([*CLI, "--input", str(missing), "--tokenizer", "tiny", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, f"llmx: data error: {missing}: no such file\n")
    src = _jsonl(tmp_path / "c.jsonl", ["x"])
    proc = subprocess.run([*CLI, "--input", str(src), "--tokenizer", str(tmp_path / "no_tok"), "--output",
                           str(tmp_path / "o"), "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"llmx: data error: {tmp_path / 'no_tok'}: no such")
    assert len(proc.stderr.splitlines()) == 1


def test_bundled_pretrain_data_matches_its_text(tokenizer):
    ds = IndexedDataset(asset_path("demo/pretrain"))
    assert ds.dtype == np.uint16 and len(ds) == 4000
    with gzip.open(asset_path("demo/pretrain.jsonl.gz"), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(4000), f)]
    assert len(texts) == 4000
    for i in (0, 1, 1234, 3999):
        assert ds[i].tolist() == _ids(tokenizer, texts[i])
    assert int(ds.sizes.max()) < 512 and ds.num_tokens > 300_000


def test_max_docs_stops_before_reading_further(tmp_path, tokenizer):
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "one"}\n{"text": "two"}\nnot json\n')
    assert preprocess([src], tmp_path / "o", tokenizer, max_docs=2).documents == 2
    assert _read(tmp_path / "o") == [_ids(tokenizer, "one"), _ids(tokenizer, "two")]
