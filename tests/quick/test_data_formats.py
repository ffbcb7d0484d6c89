"""llmx.data.formats: every format read into the same Dialogue / PreferenceExample / Prompt as its messages
(or TRL conversational) twin; one-line errors naming the record; auto-detection holding a file to one format."""
from __future__ import annotations

import json

import pytest

from llmx.data.dialogue import Dialogue, PreferenceExample, Prompt
from llmx.data.formats import FORMATS, check_format, read_preference, read_prompts, read_sft
from llmx.errors import ConfigError, DataError


def write_jsonl(tmp_path, records, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}
TOOL = {"type": "function", "function": {"name": "add", "description": "adds",
                                         "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]}
RESULT = {"role": "tool", "content": "2"}

# ---- SFT ------------------------------------------------------------------------------------------------

TOOL_DIALOGUE = Dialogue((SYSTEM, U("add 1"), CALL, RESULT, A("It is 2.")), (TOOL,))
MULTI_TURN = Dialogue((SYSTEM, U("q1"), A("a1"), U("do\nthis"), A("done")))

SFT_TWINS = {
    "messages": ({"messages": list(TOOL_DIALOGUE.messages), "tools": [TOOL]}, TOOL_DIALOGUE),
    "messages_in_conversations": ({"conversations": list(MULTI_TURN.messages)}, MULTI_TURN),
    "sharegpt": ({"conversations": [
        {"from": "human", "value": "add 1"},
        {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": 1}})},
        {"from": "observation", "value": "2"},
        {"from": "gpt", "value": "It is 2."}],
        "system": "Be brief.", "tools": json.dumps([TOOL["function"]])}, TOOL_DIALOGUE),
    "sharegpt_system_turn": ({"messages": [
        {"from": "system", "value": "Be brief."}, {"from": "user", "value": "q1"}, {"from": "assistant", "value": "a1"},
        {"from": "human", "value": "do\nthis"}, {"from": "gpt", "value": "done"}]}, MULTI_TURN),
    "alpaca": ({"instruction": "do", "input": "this", "output": "done", "system": "Be brief.",
                "history": [["q1", "a1"]]}, MULTI_TURN),
    "alpaca_no_input": ({"instruction": "do\nthis", "input": "", "output": "done", "system": "Be brief.",
                         "history": [["q1", "a1"]]}, MULTI_TURN),
    "src_tgt": ({"src": ["q1", "do\nthis"], "tgt": ["a1", "done"], "system": "Be brief."}, MULTI_TURN),
    "src_tgt_strings": ({"src": "q", "tgt": "a"}, Dialogue((U("q"), A("a")))),
    "trl_strings": ({"prompt": "q", "completion": "a"}, Dialogue((U("q"), A("a")))),
    "trl_conversational": ({"prompt": list(MULTI_TURN.messages[:-1]), "completion": [A("done")]}, MULTI_TURN),
}


@pytest.mark.parametrize("case", SFT_TWINS)
def test_sft_format_reads_as_its_messages_twin(tmp_path, case):
    record, expected = SFT_TWINS[case]
    fmt = case.split("_")[0] if not case.startswith("src_tgt") else "src_tgt"
    fmt = "messages" if case == "messages_in_conversations" else fmt
    path = write_jsonl(tmp_path, [record, record])
    assert read_sft(path) == [expected, expected]  # auto
    assert read_sft(path, fmt) == [expected, expected]


def test_tools_and_tool_messages_survive(tmp_path):
    [d] = read_sft(write_jsonl(tmp_path, [SFT_TWINS["sharegpt"][0]]))
    assert d.tools == (TOOL,)
    assert [m["role"] for m in d.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert d.messages[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1}}
    assert d.messages[3] == RESULT


def test_several_paths_read_in_order(tmp_path):
    a = write_jsonl(tmp_path, [{"src": "q", "tgt": "a"}], "a.jsonl")
    b = write_jsonl(tmp_path, [{"messages": [U("x"), A("y")]}], "b.jsonl")
    assert read_sft([a, b]) == [Dialogue((U("q"), A("a"))), Dialogue((U("x"), A("y")))]


SFT_BAD = [
    ({"messages": [U("q"), {"role": "bot", "content": "a"}]}, "messages[1].role='bot': allowed: system, user, assistant, tool"),
    ({"messages": [U("q")]}, "messages: the last message must be from the assistant (it is user)"),
    ({"messages": [U("q"), A("  ")]}, "the last assistant message is empty (nothing to learn)"),
    ({"conversations": [{"from": "gpt", "value": "a"}]},
     "conversations[0].from='gpt': expected human or observation"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "conversations[1].from='robot': allowed: system, human"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "add(1)"}]},
     "a function_call value must be JSON"),
    ({"instruction": "q", "output": 3}, "output is int, expected a string"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0] must be a [question, answer] pair"),
    ({"src": ["a", "b"], "tgt": ["x"]}, "src has 2 turns but tgt has 1"),
    ({"prompt": "q", "completion": 5}, "completion is int, expected a string"),
    ({"messages": [U("q"), A("a")], "tools": "{not json"}, "tools is a string but not JSON"),
]


@pytest.mark.parametrize("record, reason", SFT_BAD, ids=[r for _, r in SFT_BAD])
def test_malformed_sft_record_names_its_line(tmp_path, record, reason):
    path = write_jsonl(tmp_path, [record])
    with pytest.raises(DataError) as e:
        read_sft(path)
    assert str(e.value).startswith(f"{path}:1: ") and reason in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_file_mixing_formats_fails_at_the_first_record_that_does_not_fit(tmp_path):
    path = write_jsonl(tmp_path, [{"messages": [U("q"), A("a")]}, {"messages": [U("r"), A("b")]},
                                  {"instruction": "q", "output": "a"}])
    with pytest.raises(DataError, match=rf"^{path}:3: does not fit the messages format \(detected from {path}:1\): "
                                        r"needs messages \(messages \(or conversations\) of \{role, content\}\); "
                                        r"has keys instruction, output$"):
        read_sft(path)
    # the role/content and from/value shapes of `conversations` are two formats, not one
    path = write_jsonl(tmp_path, [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                                  {"conversations": [U("q"), A("a")]}], "c.jsonl")
    with pytest.raises(DataError, match=rf"^{path}:2: does not fit the sharegpt format"):
        read_sft(path)


def test_a_named_format_holds_every_record(tmp_path):
    path = write_jsonl(tmp_path, [{"src": "q", "tgt": "a"}])
    with pytest.raises(DataError, match=rf"^{path}:1: does not fit format=alpaca: needs alpaca \(instruction, output\)"):
        read_sft(path, "alpaca")


def test_unknown_keys_say_which_formats_are_read(tmp_path):
    path = write_jsonl(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=rf"^{path}:1: cannot tell the format from its keys \(question, answer\); "
                                        r"sft data is one of: messages .*alpaca \(instruction, output\)"):
        read_sft(path)


def test_format_names_are_checked():
    check_format("stage.data.format", "auto", "sft")
    for kind, names in FORMATS.items():
        for name in names:
            check_format("stage.data.format", name, kind)
    with pytest.raises(ConfigError, match=r"^stage.data.format='trl_implicit': allowed: auto, messages, sharegpt"):
        check_format("stage.data.format", "trl_implicit", "sft")


# ---- preference (DPO) ------------------------------------------------------------------------------------

PAIR = PreferenceExample(Dialogue((U("q1"), A("a1"), U("q2"))), (A("good"), A("bad")))
PAIR_SYSTEM = PreferenceExample(Dialogue((SYSTEM, U("q1"), A("a1"), U("do\nthis"))), (A("good"), A("bad")))
PREFERENCE_TWINS = {
    "trl": ({"prompt": [U("q1"), A("a1"), U("q2")], "chosen": [A("good")], "rejected": [A("bad")]}, PAIR),
    "trl_strings": ({"prompt": "q", "chosen": "good", "rejected": "bad"},
                    PreferenceExample(Dialogue((U("q"),)), (A("good"), A("bad")))),
    "trl_implicit": ({"chosen": [U("q1"), A("a1"), U("q2"), A("good")],
                      "rejected": [U("q1"), A("a1"), U("q2"), A("bad")]}, PAIR),
    "src_tgt": ({"src": ["q1", "q2"], "tgt": ["a1"], "response": ["bad", "good"], "sort": [0, 1]}, PAIR),
    "alpaca": ({"instruction": "do", "input": "this", "system": "Be brief.", "history": [["q1", "a1"]],
                "chosen": "good", "rejected": "bad"}, PAIR_SYSTEM),
    "sharegpt": ({"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                                    {"from": "human", "value": "q2"}],
                  "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}, PAIR),
}


@pytest.mark.parametrize("case", PREFERENCE_TWINS)
def test_preference_format_reads_as_its_trl_twin(tmp_path, case):
    record, expected = PREFERENCE_TWINS[case]
    fmt = "src_tgt" if case == "src_tgt" else "trl_implicit" if case == "trl_implicit" else case.split("_")[0]
    path = write_jsonl(tmp_path, [record])
    assert read_preference(path) == [expected]
    assert read_preference(path, fmt) == [expected]
    assert read_preference(path)[0].chosen == A("good")


PREFERENCE_BAD = [
    ({"src": "q", "tgt": [], "response": ["a", "b"], "sort": [1, 1]}, "sort values are equal (1)"),
    ({"src": "q", "tgt": "x", "response": ["a", "b"], "sort": [1, 0]}, "src needs exactly one more"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen is empty"),
    ({"prompt": [U("q")], "chosen": [A("a"), A("b")], "rejected": [A("c")]}, "chosen holds 2 messages"),
    ({"prompt": [U("q")], "chosen": [U("a")], "rejected": [A("c")]}, "chosen must be a string or an assistant message"),
    ({"prompt": [U("q"), A("x")], "chosen": "a", "rejected": "b"}, "prompt: the last message must be from the user or tool"),
    ({"chosen": [U("q"), A("a")], "rejected": [U("other"), A("b")]}, "they differ from message 0 on"),
    ({"chosen": "q a", "rejected": "q b"}, "chosen and rejected must be lists of messages"),
    ({"instruction": "q", "chosen": "a", "rejected": ["b"]}, "rejected must be a string or an assistant message"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "chosen must be a string or an assistant message"),
]


@pytest.mark.parametrize("record, reason", PREFERENCE_BAD, ids=[r for _, r in PREFERENCE_BAD])
def test_malformed_preference_record_names_its_line(tmp_path, record, reason):
    path = write_jsonl(tmp_path, [PREFERENCE_TWINS["trl_strings"][0], record] if "src" not in record
                       and "chosen" in record and "prompt" in record else [record])
    line = 2 if "src" not in record and "chosen" in record and "prompt" in record else 1
    with pytest.raises(DataError) as e:
        read_preference(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and reason in str(e.value), str(e.value)


# ---- KTO -----------------------------------------------------------------------------------------------

GOOD = PreferenceExample(Dialogue((U("q"),)), (A("r"),), 1)
BAD = PreferenceExample(Dialogue((U("p"),)), (A("s"),), 0)
KTO_TWINS = {
    "trl": [{"prompt": [U("q")], "completion": [A("r")], "label": True},
            {"prompt": [U("p")], "completion": [A("s")], "label": False}],
    "trl_strings": [{"prompt": "q", "completion": "r", "label": True}, {"prompt": "p", "completion": "s", "label": False}],
    "src_tgt": [{"src": "q", "tgt": [], "response": ["r"], "sort": [1]},
                {"src": "p", "tgt": [], "response": ["s"], "sort": [0]}],
    "alpaca": [{"instruction": "q", "output": "r", "kto_tag": True}, {"instruction": "p", "output": "s", "kto_tag": False}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}], "kto_tag": True},
                 {"conversations": [{"from": "human", "value": "p"}, {"from": "gpt", "value": "s"}], "kto_tag": False}],
}


@pytest.mark.parametrize("case", KTO_TWINS)
def test_kto_format_reads_as_its_trl_twin(tmp_path, case):
    path = write_jsonl(tmp_path, KTO_TWINS[case])
    assert read_preference(path, kind="kto") == [GOOD, BAD]
    assert read_preference(path, "src_tgt" if case == "src_tgt" else case.split("_")[0], kind="kto") == [GOOD, BAD]


def test_kto_needs_both_labels(tmp_path):
    path = write_jsonl(tmp_path, [KTO_TWINS["trl"][0], KTO_TWINS["trl"][0]])
    with pytest.raises(DataError, match=rf"^{path}: every example is desirable \(KTO needs both"):
        read_preference(path, kind="kto")
    bad = write_jsonl(tmp_path, [{"prompt": "q", "completion": "r", "label": "yes"}], "bad.jsonl")
    with pytest.raises(DataError, match=rf"^{bad}:1: label='yes': need true \(desirable\) or false"):
        read_preference(bad, kind="kto")
    bad = write_jsonl(tmp_path, [{"src": "q", "tgt": [], "response": ["r"], "sort": [2]}], "bad2.jsonl")
    with pytest.raises(DataError, match=rf"^{bad}:1: sort is \[2\], need \[1\]"):
        read_preference(bad, kind="kto")


# ---- prompts (infer, RL) --------------------------------------------------------------------------------------

PROMPT = Dialogue((SYSTEM, U("q1"), A("a1"), U("do\nthis")))
PROMPT_TWINS = {  # case: (record, reference for RL)
    "messages": ({"messages": list(PROMPT.messages) + [A("42")], "id": 7}, "42"),
    "sharegpt": ({"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                                    {"from": "human", "value": "do\nthis"}, {"from": "gpt", "value": "42"}],
                  "system": "Be brief.", "id": 7}, "42"),
    "alpaca": ({"instruction": "do", "input": "this", "output": "42", "system": "Be brief.",
                "history": [["q1", "a1"]], "id": 7}, "42"),
    "src_tgt": ({"src": ["q1", "do\nthis"], "tgt": ["a1", "42"], "system": "Be brief.", "id": 7}, "42"),
    "trl": ({"prompt": list(PROMPT.messages), "answer": "42", "id": 7}, "42"),
}


@pytest.mark.parametrize("case", PROMPT_TWINS)
def test_rl_prompt_format_reads_as_its_messages_twin(tmp_path, case):
    record, reference = PROMPT_TWINS[case]
    path = write_jsonl(tmp_path, [record])
    [p] = read_prompts(path, purpose="rl")
    assert p == Prompt(PROMPT, reference, lineno=1) and p.record == record and p.lineno == 1
    assert read_prompts(path, case, purpose="rl") == [p]


def test_infer_prompts_keep_their_records_and_lines(tmp_path):
    records = [{"src": "q", "id": 1}, {"src": ["q1", "do\nthis"], "tgt": ["a1"], "system": "Be brief."},
               {"prompt": "q", "id": 3}, {"prompt": [U("q")], "reference": "r"}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n")
    assert read_prompts(path) == [Prompt(Dialogue((U("q"),)), lineno=1), Prompt(PROMPT, lineno=3)]
    assert [(p.record, p.lineno) for p in read_prompts(path)] == [(records[0], 1), (records[1], 3)]
    path = write_jsonl(tmp_path, records[2:], "trl.jsonl")
    assert read_prompts(path) == [Prompt(Dialogue((U("q"),)), lineno=1), Prompt(Dialogue((U("q"),)), "r", lineno=2)]
    # infer: src_tgt's tgt is the earlier answers only; a conversation ends with the user
    path = write_jsonl(tmp_path, [{"src": "q", "tgt": "a"}], "sft.jsonl")
    with pytest.raises(DataError, match=rf"^{path}:1: src has 1 turns, so tgt needs the 0 earlier answers \(got 1\)$"):
        read_prompts(path)
    assert read_prompts(path, purpose="rl") == [Prompt(Dialogue((U("q"),)), "a", lineno=1)]
    path = write_jsonl(tmp_path, [{"messages": [U("q"), A("a")]}], "m.jsonl")
    with pytest.raises(DataError, match=rf"^{path}:1: messages: the last message must be from the user or tool"):
        read_prompts(path)


def test_prompts_with_tools(tmp_path):
    record = {"messages": [U("add 1"), CALL, RESULT], "tools": [TOOL]}
    [p] = read_prompts(write_jsonl(tmp_path, [record]), purpose="rl")
    assert p == Prompt(Dialogue((U("add 1"), CALL, RESULT), (TOOL,)), lineno=1)
