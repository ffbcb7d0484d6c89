"""Inference without a model: the sampler's choices, streamed text with stop strings, the inference
input reader's `path:line: reason` errors and the infer/serve stages' config errors (paddle-free)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import dialogue, input_error

from llmx.data.formats import read_prompts
from llmx.data.infer import chat_from_messages
from llmx.errors import DataError
from llmx.infer.sampling import BeamState, SamplingParams, next_token
from llmx.infer.text import TextTracker


def test_sampler_greedy_top_k_top_p_penalty_and_seed():
    logits = np.log(np.array([0.05, 0.5, 0.3, 0.15]))
    none = np.zeros(0, "int64")
    assert next_token(logits, SamplingParams(), np.random.RandomState(0), none) == 1
    # repetition penalty 10 on the seen best token (logit log 0.5 < 0: multiplied) hands greedy the next best
    assert next_token(logits, SamplingParams(repetition_penalty=10.0), np.random.RandomState(0), np.array([1])) == 2

    def draws(**kw):
        rng = np.random.RandomState(123)
        return [next_token(logits, SamplingParams(temperature=1.0, **kw), rng, none) for _ in range(4000)]

    assert set(draws(top_k=2)) == {1, 2}
    assert set(draws(top_p=0.75)) == {1, 2}  # 0.5 + 0.3 is the smallest head reaching 0.75
    counts = np.bincount(draws(), minlength=4) / 4000
    assert np.allclose(counts, [0.05, 0.5, 0.3, 0.15], atol=0.03), counts
    assert draws() == draws()  # a seeded stream repeats


def test_beam_state_keeps_the_best_hypotheses():
    beams = BeamState(width=2, length_penalty=1.0)
    step1 = np.log(np.array([[0.1, 0.6, 0.3]]))  # token 0 = eos
    parents, tokens = beams.step(step1, eos=0, last=False)
    assert (parents, tokens) == ([0, 0], [1, 2])
    step2 = np.log(np.array([[0.9, 0.05, 0.05], [0.2, 0.4, 0.4]]))
    beams.step(step2, eos=0, last=True)
    assert beams.best() == [1]  # [1] then eos: log(0.6 * 0.9) / 1 beats every two-token hypothesis


def test_text_tracker_streams_only_what_stays_and_cuts_at_stop_strings():
    pieces = ["Hel", "lo", " wor", "ld", "!", " EN", "D more"]
    t = TextTracker(lambda ids: "".join(pieces[i] for i in ids), stop=["END"])
    out = [t.update(list(range(n))) for n in range(1, len(pieces) + 1)]
    assert out == ["Hel", "lo", " wor", "ld", "!", " ", ""]  # " EN" held back: it could become "END"
    assert t.stopped and t.text == "Hello world! " and t.finish() == ""
    half = TextTracker(lambda ids: "ab\ufffd" if len(ids) == 1 else "abc")
    assert half.update([1]) == "ab" and half.update([1, 2]) == "c"


def test_chat_messages_are_checked():
    chat = chat_from_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}])
    assert chat.system == "be brief" and chat.messages[2] == {"role": "assistant", "content": "hello"}
    assert chat.last_user() == "bye" and len(chat.messages) == 4
    for bad, reason in [([], "non-empty list"), ([{"role": "user", "content": 3}], "content: is int"),
                        ([{"role": "bot", "content": "x"}], "role='bot': allowed: system, user, assistant"),
                        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                         "the last message must be from the user"),
                        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "can only come first")]:
        with pytest.raises(DataError, match=reason.replace("(", r"\(").replace("[", r"\[")):
            chat_from_messages(bad)


def test_inference_input_errors_name_path_and_line(tmp_path):
    good = [{"src": "a"}, {"src": ["q1", "q2"], "tgt": ["a1"], "id": 7}, {"src": "x"}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in good) + "\n")
    lines = read_prompts(path)
    assert [ln.lineno for ln in lines] == [1, 2, 3] and lines[1].dialogue == dialogue(("q1", "a1"), question="q2")
    assert lines[1].record["id"] == 7
    cases = {'{"src": "a"}\n{"src": ': "in.jsonl:2: invalid JSON (Expecting value at column 9)",
             '{"question": "a"}\n': "in.jsonl:1: cannot tell the format from its keys (question)",
             '{"src": ["a", "b"]}\n': "in.jsonl:1: src has 2 turns, so tgt needs the 1 earlier answers (got 0)",
             '{"src": "a", "seed": -1}\n': "in.jsonl:1: seed=-1: must be an integer >= 0",
             '{"messages": [{"role": "user"}]}\n': "in.jsonl:1: messages[0].content: is missing, expected a string"}
    for text, expected in cases.items():
        path.write_text(text)
        line = input_error("stage=infer", f"stage.input={path}")
        assert line.startswith(f"llmx: data error: {tmp_path}/{expected}") and "\n" not in line, line


@pytest.mark.parametrize("overrides,expected", [
    (["stage=infer"], "stage.input=None: needs a JSONL file of prompts"),
    (["stage=infer", "stage.input=/nonexistent.jsonl"], "stage.input='/nonexistent.jsonl': no such file"),
    (["stage=infer", "stage.mode=fast"], "stage.mode='fast': allowed: dynamic, static"),
    (["stage=infer", "stage.export_only=true"], "stage.export_only=True: exports a static program: needs stage.mode=static"),
    (["stage=infer", "stage.export_only=true", "stage.mode=static", "stage.temperature=-1"],
     "stage.temperature=-1.0: must be between 0 and 100"),
    (["stage=infer", "stage.export_only=true", "stage.mode=static", "stage.num_beams=2", "stage.temperature=0.7"],
     "stage.num_beams > 1 is beam search: it needs temperature=0"),
    (["stage=infer", "stage.export_only=true", "stage.mode=static", "parallel=tp2"],
     "stage.mode='static': static mode runs in one process"),
    (["stage=infer", "stage.export_only=true", "stage.mode=static", "parallel=pp2"],
     "parallel='dp=1 pp=2 sharding=1': generation runs in one process or under tensor parallelism only"),
    (["stage=infer", "model=opt", "stage.export_only=true", "stage.mode=static"],
     "stage.mode='static': model.family=opt does not run as a static program: paddle.jit.to_static"),
    (["stage=infer", "model=yuan", "stage.export_only=true", "stage.mode=static"],
     "stage.mode='static': model.family=yuan does not run as a static program: Yuan's localized filtering"),
    (["stage=infer", "model=qwen3_moe", "stage.export_only=true", "stage.mode=static"],
     "stage.mode='static': model.family=qwen3_moe does not run as a static program: paddle.jit.to_static"),
    (["stage=serve", "model=bloom", "stage.mode=static", "stage.static_dir=/"],
     "stage.mode='static': model.family=bloom does not run as a static program"),
    (["stage=serve", "stage.mode=static"], "stage.static_dir=None: static mode serves an exported program"),
    (["stage=serve", "stage.port=70000"], "stage.port=70000: must be a TCP port"),
    (["stage=serve", "parallel=tp2"], "the server runs in one process (parallel=single)"),
    (["stage=serve", "stage.host=0.0.0.0"], "stage.host='0.0.0.0': serves other machines: set stage.api_key (or "
     "LLMX_API_KEY), or stage.allow_no_key=true to serve without a key"),
    (["stage=serve", "stage.host=::", "stage.port=0"], "stage.host='::': serves other machines"),
    (["stage=serve", "stage.max_request_bytes=0"], "stage.max_request_bytes=0: must be >= 1"),
    (["stage=serve", "stage.max_tokens=100", "stage.max_tokens_per_request=50"],
     "stage.max_tokens=100: the default must be within stage.max_tokens_per_request (50)"),
])
def test_infer_and_serve_config_errors(overrides, expected):
    line = input_error(*overrides)
    assert line.startswith("llmx: config error: ") and expected in line, line


@pytest.mark.parametrize("overrides", [["stage.host=localhost"], ["stage.host=127.0.0.2"], ["stage.host=::1"],
                                       ["stage.host=0.0.0.0", "stage.api_key=k"],
                                       ["stage.host=0.0.0.0", "stage.allow_no_key=true"]])
def test_serve_without_a_key_is_for_loopback_unless_allowed(overrides, monkeypatch):
    from helpers import compose

    from llmx.stages import validate

    monkeypatch.delenv("LLMX_API_KEY", raising=False)
    validate(compose("stage=serve", "stage.port=0", *overrides))  # no error


def test_serve_refuses_a_port_in_use_before_loading():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = input_error("stage=serve", f"stage.port={port}")
    assert line == (f"llmx: config error: stage.port={port}: cannot listen on 127.0.0.1:{port}: Address already in use "
                    "(choose another: stage.port=N, or 0 for any free port)")

