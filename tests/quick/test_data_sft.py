"""SFT data: parsing, target-only labels, truncation, padding (paddle-free except the tokenizer)."""
from __future__ import annotations

import json

import pytest

from llmx.errors import DataError
from llmx.schema import asset_path
from helpers import dialogue

from llmx.data.formats import read_sft
from llmx.data.sft import IGNORE_INDEX, SftEncoder
from llmx.tokens import pad_batch


@pytest.fixture(scope="module")
def tokenizer():
    from paddlenlp.transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))


def _write(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_single_and_multi_turn(tmp_path):
    path = _write(tmp_path, [json.dumps({"src": "a", "tgt": "b"}), "",
                             json.dumps({"src": ["x", "y"], "tgt": ["1", "2"]})])
    convs = read_sft(path)
    assert convs == [dialogue(("a", "b")), dialogue(("x", "1"), ("y", "2"))]


@pytest.mark.parametrize("line, reason", [
    ('{"src": "a"}', "does not fit the src_tgt format"),
    ('{"src": "a", "tgt": ', "invalid JSON (Expecting value at column 21)"),
    ('{"src": ["a", "b"], "tgt": ["c"]}', "src has 2 turns but tgt has 1"),
    ('{"src": "a", "tgt": 3}', "tgt must be a string or a list of strings"),
    ('{"src": ["a"], "tgt": [3]}', "tgt must be a string or a list of strings"),
    ('[1, 2]', "expected a JSON object"),
    ('{"src": "a", "tgt": "  "}', "the last assistant message is empty"),
])
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path, [json.dumps({"src": "ok", "tgt": "ok"}), line])
    with pytest.raises(DataError) as err:
        read_sft(path)
    assert str(err.value).startswith(f"{path}:2: ") and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_file_is_an_error(tmp_path):
    path = _write(tmp_path, [""])
    with pytest.raises(DataError, match="no examples"):
        read_sft(path)


def test_labels_cover_answers_only_and_are_shifted(tokenizer):
    enc = SftEncoder(tokenizer, max_length=128, src_length=96)
    conv = dialogue(("add 2 + 3 =", "5"))
    prompt, answer = enc.turn_ids(conv)[0]
    assert prompt[0] == tokenizer.bos_token_id and answer[-1] == tokenizer.eos_token_id
    ex = enc.encode(conv)
    full = prompt + answer
    assert ex["input_ids"] == full[:-1]
    # labels[i] is the token after input_ids[i]; only answer tokens are learned
    assert ex["labels"] == [IGNORE_INDEX] * (len(prompt) - 1) + answer
    assert tokenizer.decode(answer[:-1]).strip() == "5"


def test_multi_turn_learns_every_answer(tokenizer):
    enc = SftEncoder(tokenizer, max_length=128, src_length=96)
    conv = dialogue(("copy: dog", "dog"), ("upper it", "DOG"))
    (p1, a1), (p2, a2) = enc.turn_ids(conv)
    ex = enc.encode(conv)
    expected = [IGNORE_INDEX] * (len(p1) - 1) + a1 + [IGNORE_INDEX] * len(p2) + a2
    assert ex["labels"] == expected
    assert enc.prompt_for_generation(conv) == p1 + a1 + p2


def test_truncation_keeps_prompt_tail_and_limits_length(tokenizer):
    enc = SftEncoder(tokenizer, max_length=12, src_length=6)
    conv = dialogue(("copy: " + " ".join(["word"] * 20), "a b c d e f g h"))
    prompt, _ = enc.turn_ids(conv)[0]
    ex = enc.encode(conv)
    assert len(ex["input_ids"]) + 1 == 12
    assert ex["input_ids"][:6] == prompt[-6:]
    # a long history is dropped before the last turn is cut
    long_history = dialogue(("copy: " + "x " * 30, "y " * 30), ("upper it", "Y"))
    kept = enc.encode(long_history)
    assert len(kept["input_ids"]) < 12 and kept["labels"][-1] == tokenizer.eos_token_id


def test_pad_batch_right_and_left():
    feats = [{"input_ids": [5, 6, 7], "labels": [6, 7, 2]}, {"input_ids": [9], "labels": [2]}]
    right = pad_batch(feats, pad_id=3)
    assert right["input_ids"].tolist() == [[5, 6, 7], [9, 3, 3]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[6, 7, 2], [2, IGNORE_INDEX, IGNORE_INDEX]]
    left = pad_batch([{"input_ids": f["input_ids"]} for f in feats], pad_id=3, left=True)
    assert left["input_ids"].tolist() == [[5, 6, 7], [3, 3, 9]] and "labels" not in left
