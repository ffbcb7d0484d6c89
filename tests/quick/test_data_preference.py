"""Preference (DPO) and pointwise (KTO) data: parsing and one-line errors, the bundled demo files,
and the dpo/kto config errors (all before paddle is imported)."""
from __future__ import annotations

import json

import pytest
from helpers import config_error, dialogue, input_error

from llmx.errors import DataError
from llmx.schema import asset_path
from llmx.data.demo_preference import make_preference, wrong_answer
from llmx.data.dialogue import PreferenceExample, assistant
from llmx.data.formats import read_preference
from llmx.data.preference import encode_trl


def _write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_pairs_sorted_by_sort_and_multi_turn(tmp_path):
    path = _write(tmp_path, [
        json.dumps({"src": "q", "tgt": [], "response": ["bad", "good"], "sort": [0, 1]}), "",
        json.dumps({"src": ["a", "b"], "tgt": ["x"], "response": ["good", "bad"], "sort": [5, 2]}),
    ])
    assert read_preference(path) == [
        PreferenceExample(dialogue(question="q"), (assistant("good"), assistant("bad")), 1),
        PreferenceExample(dialogue(("a", "x"), question="b"), (assistant("good"), assistant("bad")), 1),
    ]


def test_reads_kto_lines(tmp_path):
    path = _write(tmp_path, [json.dumps({"src": "q", "tgt": [], "response": ["r"], "sort": [1]}),
                             json.dumps({"src": "p", "tgt": [], "response": ["s"], "sort": [0]})])
    assert [(e.prompt, e.responses, e.label) for e in read_preference(path, kind="kto")] == [
        (dialogue(question="q"), (assistant("r"),), 1), (dialogue(question="p"), (assistant("s"),), 0)]


class _Chars:
    """A tokenizer of one id per character (no template): what encode_trl lays out is readable."""
    bos_token_id, eos_token_id, special_tokens_map, llmx_chat_template = 1, 2, {}, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_trl_layout_prompt_then_both_responses_with_next_token_labels():
    ex = PreferenceExample(dialogue(("a", "x"), question="b"), (assistant("GO"), assistant("NO")))
    (seq,) = encode_trl([ex], _Chars(), max_length=64, max_prompt_length=32)
    # the plain template, as SFT renders it: <bos>Q: a\nA:x<eos>Q: b\nA: then each response and <eos>
    prompt = [1] + [ord(c) for c in "Q: a\nA:x"] + [2] + [ord(c) for c in "Q: b\nA:"]
    n = len(prompt) - 1
    assert seq["input_ids"] == prompt[:-1] + [prompt[-1], ord("G"), ord("O")] + [prompt[-1], ord("N"), ord("O")]
    assert seq["response_0_labels"] == [0] * n + [ord("G"), ord("O"), 2] + [0] * 3
    assert seq["response_1_labels"] == [0] * (n + 3) + [ord("N"), ord("O"), 2]
    assert seq["position_ids"] == list(range(n + 3)) + list(range(n, n + 3))
    assert seq["response_indexs"] == [n, n + 3, n + 6, 1]
    assert not seq["attention_mask"][n + 3:, n:n + 3].any() and seq["attention_mask"][n + 3:, :n].all()
    # KTO: the second response is the next example's, and the sort slot carries the label
    other = PreferenceExample(dialogue(question="c"), (assistant("Z"),), 0)
    kto = encode_trl([PreferenceExample(ex.prompt, (assistant("GO"),), 1), other], _Chars(), 64, 32, pointwise=True)
    assert kto[0]["response_1_labels"][-2:] == [ord("Z"), 2] and [s["response_indexs"][-1] for s in kto] == [1, 0]
    # too long: the prompt keeps its tail, the responses share the rest pro rata, each keeps a token
    cut = encode_trl([ex], _Chars(), max_length=12, max_prompt_length=6)[0]
    assert len(cut["input_ids"]) == 11 and cut["input_ids"][:5] == prompt[-6:-1]


OK_DPO = {"src": "q", "tgt": [], "response": ["a", "b"], "sort": [1, 0]}


@pytest.mark.parametrize("kind, obj, reason", [
    ("dpo", {k: v for k, v in OK_DPO.items() if k != "sort"}, "needs src_tgt (src, tgt, response, sort); has keys src, tgt, response"),
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
        read_preference(path, kind=kind)
    assert str(e.value).startswith(f"{path}:2: ") and reason in str(e.value), str(e.value)


def test_kto_needs_both_labels(tmp_path):
    path = _write(tmp_path, [json.dumps({"src": "q", "tgt": [], "response": ["r"], "sort": [1]})] * 2)
    with pytest.raises(DataError, match="every example is desirable"):
        read_preference(path, kind="kto")


def test_bundled_preference_data_is_generated_checkable_and_held_out():
    files = make_preference(__import__("random").Random(1236))
    for name, rows in files.items():  # the committed files are what the script makes
        assert (asset_path(f"demo/{name}.jsonl") and
                open(asset_path(f"demo/{name}.jsonl")).read() == "".join(json.dumps(r) + "\n" for r in rows)), name
    train, held_out = read_preference(asset_path("demo/dpo_train.jsonl")), \
        read_preference(asset_path("demo/dpo_eval.jsonl"))
    sft_eval = [json.loads(line) for line in open(asset_path("demo/sft_eval.jsonl"))]
    # chosen = the SFT task's exact answer, rejected = something else; the eval prompts are the SFT eval prompts
    assert [e.chosen["content"] for e in held_out] == [(x["tgt"] if isinstance(x["tgt"], str) else x["tgt"][-1])
                                                       for x in sft_eval]
    assert all(e.chosen != e.rejected for e in train + held_out)
    single = lambda examples: {e.prompt.last_user() for e in examples if len(e.prompt.messages) == 1}  # noqa: E731
    assert not single(held_out) & single(train)
    assert any(len(e.prompt.messages) > 1 for e in held_out)  # multi-turn lines too
    kto = read_preference(asset_path("demo/kto_train.jsonl"), kind="kto")
    # KTO's lines ask dpo_train's prompts in order; desirable exactly when the response is that pair's chosen
    # (correct) answer; 506 of the 1000 are (a fair coin per line, seeded)
    assert [e.prompt for e in kto] == [e.prompt for e in train]
    assert [e.label for e in kto] == [int(k.responses[0] == d.chosen) for k, d in zip(kto, train)]
    assert sum(e.label for e in kto) == 506 and len(kto) == 1000
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
    (["stage=rm", "parallel=pp2", "stage.peft.method=lora"],
     "stage.peft.method='lora': stage=rm under pipeline parallelism trains full weights"),
    (["stage=rm", "parallel=tp2pp2"], "parallel.tp=2: stage=rm runs under dp and sharding"),
    (["stage=kto", "stage.desirable_weight=0"], "stage.desirable_weight=0.0: must be > 0"),
    (["stage=kto", "stage.peft.method=prefix"], "preference stages train full weights (none) or LoRA adapters"),
])
def test_bad_alignment_config_is_one_line(overrides, message):
    line = input_error(*overrides)
    assert message in line, line
