"""Preference (DPO) and pointwise (KTO) data: parsing and one-line errors, the bundled demo files,
and the dpo/kto config errors (all before paddle is imported)."""
from __future__ import annotations

import json

import pytest
from helpers import config_error, input_error

from llmx.config import DataError, asset_path
from llmx.data.demo_preference import make_preference, wrong_answer
from llmx.data.preference import PreferenceExample, read_preference_jsonl, trl_record


def _write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_pairs_sorted_by_sort_and_multi_turn(tmp_path):
    path = _write(tmp_path, [
        json.dumps({"src": "q", "tgt": [], "response": ["bad", "good"], "sort": [0, 1]}), "",
        json.dumps({"src": ["a", "b"], "tgt": ["x"], "response": ["good", "bad"], "sort": [5, 2]}),
    ])
    assert read_preference_jsonl(path) == [
        PreferenceExample((), "q", ("good", "bad"), 1),
        PreferenceExample((("a", "x"),), "b", ("good", "bad"), 1),
    ]
    ex = read_preference_jsonl(path)[1]
    # no chat template: prompts are rendered with the SFT plain template, as an SFT run saw them
    assert trl_record(ex, chat_template=False) == {"src": ["Q: a\nA:", "Q: b\nA:"], "tgt": ["x"],
                                                   "response": ["good", "bad"], "sort": [1, 0]}
    assert trl_record(ex, chat_template=True, second="other")["src"] == ["a", "b"]
    assert trl_record(ex, chat_template=True, second="other")["response"] == ["good", "other"]


def test_reads_kto_lines(tmp_path):
    path = _write(tmp_path, [json.dumps({"src": "q", "tgt": [], "response": ["r"], "sort": [1]}),
                             json.dumps({"src": "p", "tgt": [], "response": ["s"], "sort": [0]})])
    assert [(e.prompt, e.responses, e.label) for e in read_preference_jsonl(path, "kto")] == [("q", ("r",), 1),
                                                                                            ("p", ("s",), 0)]


OK_DPO = {"src": "q", "tgt": [], "response": ["a", "b"], "sort": [1, 0]}


@pytest.mark.parametrize("kind, obj, reason", [
    ("dpo", {k: v for k, v in OK_DPO.items() if k != "sort"}, "missing key 'sort'"),
    ("dpo", {**OK_DPO, "sort": [1, 0, 2]}, "response has 2 entries but sort has 3"),
    ("dpo", {**OK_DPO, "sort": [1, 1]}, "sort values are equal (1)"),
    ("dpo", {**OK_DPO, "response": ["a", " "]}, "response[1] is empty"),
    ("dpo", {**OK_DPO, "src": ""}, "the last src is empty"),
    ("dpo", {**OK_DPO, "tgt": "x"}, "src has 1 turns and tgt 1"),
    ("dpo", {**OK_DPO, "response": ["a"], "sort": [1]}, "need 2 (chosen and rejected"),
    ("dpo", {**OK_DPO, "response": "ab"}, "response must be a list of strings"),
    ("kto", {**OK_DPO, "response": ["a"], "sort": [2]}, "need [1] (desirable) or [0] (undesirable)"),
    ("kto", OK_DPO, "need 1 (KTO data is pointwise)"),
])
def test_bad_line_names_path_line_and_reason(tmp_path, kind, obj, reason):
    good = json.dumps({**OK_DPO, "response": ["a"], "sort": [1]} if kind == "kto" else OK_DPO)
    path = _write(tmp_path, [good, json.dumps(obj)])
    with pytest.raises(DataError) as e:
        read_preference_jsonl(path, kind)
    assert str(e.value).startswith(f"{path}:2: ") and reason in str(e.value), str(e.value)


def test_kto_needs_both_labels(tmp_path):
    path = _write(tmp_path, [json.dumps({"src": "q", "tgt": [], "response": ["r"], "sort": [1]})] * 2)
    with pytest.raises(DataError, match="every line is desirable"):
        read_preference_jsonl(path, "kto")


def test_bundled_preference_data_is_generated_checkable_and_held_out():
    files = make_preference(__import__("random").Random(1236))
    for name, rows in files.items():  # the committed files are what the script makes
        assert (asset_path(f"demo/{name}.jsonl") and
                open(asset_path(f"demo/{name}.jsonl")).read() == "".join(json.dumps(r) + "\n" for r in rows)), name
    train, held_out = read_preference_jsonl(asset_path("demo/dpo_train.jsonl")), \
        read_preference_jsonl(asset_path("demo/dpo_eval.jsonl"))
    sft_eval = [json.loads(line) for line in open(asset_path("demo/sft_eval.jsonl"))]
    # chosen = the SFT task's exact answer, rejected = something else; the eval prompts are the SFT eval prompts
    assert [e.chosen for e in held_out] == [(x["tgt"] if isinstance(x["tgt"], str) else x["tgt"][-1]) for x in sft_eval]
    assert all(e.chosen != e.rejected for e in train + held_out)
    assert not {e.prompt for e in held_out if not e.history} & {e.prompt for e in train}
    assert any(e.history for e in held_out)  # multi-turn lines too
    kto = read_preference_jsonl(asset_path("demo/kto_train.jsonl"), "kto")
    assert 0.4 < sum(e.label for e in kto) / len(kto) < 0.6
    assert wrong_answer("add 20 + 3 =", "23", __import__("random").Random(0)) != "23"
    assert wrong_answer("upper: cat", "CAT", None) == "Cat" and wrong_answer("first letter of cat", "c", None) == "t"


def test_bad_data_line_is_one_line_before_paddle(tmp_path):
    bad = _write(tmp_path, [json.dumps(OK_DPO), json.dumps({**OK_DPO, "sort": [3, 3]})])
    line = config_error("stage=dpo", f"stage.data.train={bad}", tmp_path=tmp_path)
    assert line == f"llmx: data error: {bad}:2: sort values are equal (3): the higher one marks the chosen response"


@pytest.mark.parametrize("overrides, message", [
    (["stage=dpo", "stage.loss_type=unknown"], "stage.loss_type='unknown': allowed: sigmoid, ipo, hinge, kto_pair, "
                                               "sppo_hard, nca_pair, dpop, orpo, simpo"),
    (["stage=dpo", "stage.loss_type=simpo", "stage.reference_free=false"],
     "stage.reference_free=False: loss_type=simpo is reference-free"),
    (["stage=dpo", "stage.loss_type=dpop", "stage.reference_free=true"],
     "stage.reference_free=True: loss_type=dpop compares against a reference model; reference_free works with "
     "sigmoid, ipo, hinge, orpo, simpo"),
    (["stage=dpo", "stage.loss_type=ipo", "stage.label_smoothing=0.1"], "only the sigmoid and simpo losses"),
    (["stage=dpo", "stage.beta=0"], "stage.beta=0.0: must be > 0"),
    (["stage=dpo", "stage.merge_adapter=true"], "stage.merge_adapter=True: needs stage.peft.method=lora"),
    (["stage=dpo", "parallel=pp2"], "parallel.pp=2: stage=dpo does not run under pipeline parallelism"),
    (["stage=kto", "stage.desirable_weight=0"], "stage.desirable_weight=0.0: must be > 0"),
    (["stage=kto", "stage.peft.method=prefix"], "preference stages train full weights (none) or LoRA adapters"),
])
def test_bad_alignment_config_is_one_line(overrides, message):
    line = input_error(*overrides)
    assert message in line, line
