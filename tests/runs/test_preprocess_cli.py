"""`python -m llmx.data.preprocess` as a command: a run end to end, and a bad line as one line
(the library itself: tests/quick/test_preprocess.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from llmx.schema import asset_path
from llmx.data.indexed import IndexedDataset

TEXTS = ["The cat sees 12 dogs.", "add 3 + 4 = 7\nreverse: bird drib", "", "naïve café 北京", "  two  spaces "]
CLI = [sys.executable, "-m", "llmx.data.preprocess"]


@pytest.fixture(scope="module")
def tokenizer():
    from paddlenlp.transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t, "meta": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def _read(prefix) -> list[list[int]]:
    return [x.tolist() for x in IndexedDataset(prefix)]


def test_cli(tmp_path, tokenizer):
    src = _jsonl(tmp_path / "c.jsonl", TEXTS)
    # (--workers: tests/quick/test_preprocess.py::test_workers_give_byte_identical_files)
    proc = subprocess.run([*CLI, "--input", str(src), "--tokenizer", "tiny", "--output", str(tmp_path / "d" / "c")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"documents: 5, tokens: \d+, tokens/s: \d+(\.\d)?", last), last
    assert int(last.split(", ")[1].split(": ")[1]) == sum(len(_ids(tokenizer, t)) for t in TEXTS)
    assert _read(tmp_path / "d" / "c") == [_ids(tokenizer, t) for t in TEXTS]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"content": "x"}\n')
    proc = subprocess.run([*CLI, "--input", str(bad), "--tokenizer", "tiny", "--output", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"llmx: data error: {bad}:2: no key 'text'"


