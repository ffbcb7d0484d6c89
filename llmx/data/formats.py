"""The dataset formats people have, read into one shape (paddle-free): llmx.data.dialogue's Dialogue (SFT),
PreferenceExample (DPO/RM, KTO) and Prompt (infer, RL), from any file llmx.data.files reads.

Formats, by the keys of a record (`stage.data.format`: one of these names, or `auto`):

    messages      {"messages": [{"role", "content", ...}], "tools"?}; `conversations` holding role/content
                  dicts is read the same (many HF datasets name it so)
    sharegpt      {"conversations" (or "messages"): [{"from", "value"}], "system"?, "tools"?} (LLaMA-Factory):
                  from human/user, gpt/assistant, system (first only), function_call (an assistant message
                  whose tool_calls are the JSON value: {"name", "arguments"} or a list of them), observation
                  (a tool message); users/observations and assistants/function calls take turns
    alpaca        {"instruction", "input"?, "output", "system"?, "history"?: [[question, answer], ...]}
                  (LLaMA-Factory): the user message is the instruction, then a newline and the input when
                  the input is non-empty; history is the earlier turns
    src_tgt       PaddleNLP's {"src": str|[str], "tgt": str|[str], "system"?} and, for preference data,
                  {"src", "tgt", "response", "sort"}
    trl           TRL's prompt/completion family, each value a string or a list of messages:
                  SFT {"prompt", "completion"}; DPO {"prompt", "chosen", "rejected"};
                  KTO {"prompt", "completion", "label": bool}; prompts {"prompt"}
    trl_implicit  TRL's implicit-prompt preference {"chosen": [messages], "rejected": [messages]}: the
                  leading messages both share are the prompt

Preference data in the alpaca format has `chosen`/`rejected` strings instead of `output`, in the sharegpt
format `chosen`/`rejected` messages ({"from": "gpt", "value"}) after the conversations; KTO data in either
has `kto_tag` (bool) and its `output` (alpaca) or last gpt message (sharegpt) is the response.

With `auto`, each file's first record picks the format and every other record must fit it; a record that
does not fails with `where: reason` naming the keys the format needs. A plain string becomes a user
message (prompts) or an assistant message (responses, answers); `tools` may be a list or a JSON string,
and a bare function schema ({"name", "parameters"}) is wrapped as {"type": "function", "function": ...}
so every format's tools look alike.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from llmx.data.dialogue import Dialogue, PreferenceExample, Prompt, assistant, check_messages, user
from llmx.data.files import numbered_records
from llmx.errors import DataError
from llmx.schema import data as data_schema
# The format names each kind of data takes, and the check of a stage's data block, are the schema's.
from llmx.schema.data import FORMATS, check_format, data_paths

check_data_config = data_schema.check_data_config  # (its old home: outside stages may import it from here)

# The keys each format needs, per kind of data: what a record must hold to fit, and what errors name.
NEEDS = {
    "sft": {"messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
            "src_tgt": ("src", "tgt"), "trl": ("prompt", "completion")},
    "preference": {"src_tgt": ("src", "tgt", "response", "sort"), "trl": ("prompt", "chosen", "rejected"),
                   "trl_implicit": ("chosen", "rejected"), "alpaca": ("instruction", "chosen", "rejected"),
                   "sharegpt": ("conversations", "chosen", "rejected")},
    "kto": {"src_tgt": ("src", "tgt", "response", "sort"), "trl": ("prompt", "completion", "label"),
            "alpaca": ("instruction", "output", "kto_tag"), "sharegpt": ("conversations", "kto_tag")},
    "prompts": {"src_tgt": ("src",), "messages": ("messages",), "sharegpt": ("conversations",),
                "alpaca": ("instruction",), "trl": ("prompt",)},
}
CHAT_KEYS = ("messages", "conversations")
REFERENCE_KEYS = ("reference", "answer", "solution")  # a trl prompt's reference answer, the first present


# ---- reading files --------------------------------------------------------------------------------------

def _chat_key(record: dict) -> Optional[str]:
    return next((k for k in CHAT_KEYS if k in record), None)


def _is_sharegpt(record: dict) -> bool:
    turns = record.get(_chat_key(record))
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and "from" in turns[0]


def _fits(record: dict, kind: str, fmt: str) -> bool:
    needs = NEEDS[kind][fmt]
    if needs[0] in CHAT_KEYS:  # messages and sharegpt share their keys: the turns' shape tells them apart
        return _chat_key(record) is not None and _is_sharegpt(record) == (fmt == "sharegpt") and \
            all(k in record for k in needs[1:])
    if fmt == "trl_implicit" and any(k in record for k in ("prompt", "instruction", "src") + CHAT_KEYS):
        return False  # chosen/rejected beside another format's prompt keys are that format's
    return all(k in record for k in needs)


def _describe(kind: str, fmt: str) -> str:
    needs = list(NEEDS[kind][fmt])
    if fmt == "messages":
        needs[0] = "messages (or conversations) of {role, content}"
    elif fmt == "sharegpt":
        needs[0] = "conversations (or messages) of {from, value}"
    return f"{fmt} ({', '.join(needs)})"


def _records(paths, fmt: str, kind: str, what: str):
    """(where, number, record, format) for every record of every path; each file's format detected from its
    first record when `fmt` is auto, and every record checked to fit it."""
    check_format("stage.data.format", fmt, kind)
    for path in data_paths(paths):
        detected = fmt
        first = None
        for where, number, record in numbered_records(path, what):
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if detected == "auto":
                detected = next((f for f in FORMATS[kind] if _fits(record, kind, f)), None)
                if detected is None:
                    raise DataError(f"{where}: cannot tell the format from its keys ({', '.join(record) or 'none'}); "
                                    f"{kind} data is one of: {'; '.join(_describe(kind, f) for f in FORMATS[kind])}")
                first = where
            if not _fits(record, kind, detected):
                source = f"the {detected} format (detected from {first})" if first else f"format={detected}"
                raise DataError(f"{where}: does not fit {source}: needs {_describe(kind, detected)}; "
                                f"has keys {', '.join(record) or 'none'}")
            yield where, number, record, detected


# ---- values every format shares ---------------------------------------------------------------------------

def _string(value: Any, where: str, key: str, empty_ok: bool = True) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {key} is {type(value).__name__}, expected a string")
    if not empty_ok and not value.strip():
        raise DataError(f"{where}: {key} is empty")
    return value


def _strings(value: Any, where: str, key: str) -> list[str]:
    """A string or a list of strings, as a list (PaddleNLP's src/tgt)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key} must be a string or a list of strings")
    return value


def _tools(record: dict, where: str) -> Optional[tuple]:
    tools = record.get("tools")
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: tools is a string but not JSON ({e.msg}); expected a list of tool schemas") \
                from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{where}: tools must be a list of tool schemas (objects) or a JSON string of one")
    # LLaMA-Factory lists bare function schemas; OpenAI wraps them: one shape for every template.
    return tuple(t if "type" in t or "name" not in t else {"type": "function", "function": t} for t in tools)


def _message(m: Any) -> Any:
    """A role/content message as read, less the null fields columnar files give every message."""
    if not isinstance(m, dict):
        return m
    out = {k: v for k, v in m.items() if v is not None or k == "content"}
    if isinstance(out.get("tool_calls"), list):
        out["tool_calls"] = [_tool_call(c) for c in out["tool_calls"]]
    return out


def _tool_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    call = {k: v for k, v in call.items() if v is not None}
    if isinstance(call.get("function"), dict):
        call["function"] = {k: v for k, v in call["function"].items() if v is not None}
    return call


def _messages(value: Any, where: str, key: str) -> list:
    """`value`: a string (one user message) or a list of role/content messages, unchecked."""
    if isinstance(value, str):
        return [user(value)]
    if not isinstance(value, list):
        raise DataError(f"{where}: {key} is {type(value).__name__}, expected a string or a list of messages")
    return [_message(m) for m in value]


def _response(value: Any, where: str, key: str) -> dict:
    """One assistant message: a non-empty string, a message, or a list holding exactly one message."""
    if isinstance(value, str):
        _string(value, where, key, empty_ok=False)
        return assistant(value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    elif isinstance(value, list):
        raise DataError(f"{where}: {key} holds {len(value)} messages; a response is one assistant message")
    message = _message(value)
    if not isinstance(message, dict) or message.get("role") != "assistant":
        raise DataError(f"{where}: {key} must be a string or an assistant message {{\"role\": \"assistant\", "
                        "\"content\"}")
    if not message.get("tool_calls"):  # an answer that only calls tools has no content
        _string(message.get("content"), where, f"{key} content", empty_ok=False)
    return message


def _label(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise DataError(f"{where}: {key}={value!r}: need true (desirable) or false (undesirable)")


# ---- conversations, per format ------------------------------------------------------------------------------

SHAREGPT_ROLES = {"human": "user", "user": "user", "observation": "tool",
                  "gpt": "assistant", "assistant": "assistant", "function_call": "assistant"}


def _sharegpt_call(value: str, where: str) -> list:
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: a function_call value must be JSON {{\"name\", \"arguments\"}} ({e.msg})") \
            from None
    calls = calls if isinstance(calls, list) else [calls]
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise DataError(f"{where}: a function_call value must be JSON {{\"name\", \"arguments\"}} or a list of them")
    return [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
            for c in calls]


def _sharegpt_turn(turn: Any, where: str) -> dict:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise DataError(f"{where}: must be an object with from and value")
    tag, value = turn["from"], turn["value"]
    if tag not in SHAREGPT_ROLES and tag != "system":
        raise DataError(f"{where}.from={tag!r}: allowed: system, {', '.join(SHAREGPT_ROLES)}")
    _string(value, where, "value")
    if tag == "function_call":
        return {"role": "assistant", "content": None, "tool_calls": _sharegpt_call(value, where)}
    return {"role": SHAREGPT_ROLES.get(tag, "system"), "content": value}


def sharegpt_messages(record: dict, where: str) -> list:
    """A ShareGPT record's conversation as role/content messages (checked for LLaMA-Factory's turn order)."""
    key = _chat_key(record)
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: {key} must be a non-empty list of {{\"from\", \"value\"}} objects")
    messages = [_sharegpt_turn(t, f"{where}: {key}[{i}]") for i, t in enumerate(turns)]
    system = record.get("system")
    if messages[0]["role"] == "system":  # a system turn overrides the system column
        system, messages, first = messages[0]["content"], messages[1:], 1
    else:
        first = 0
    for i, m in enumerate(messages):
        asks = m["role"] in ("user", "tool")
        if asks != (i % 2 == 0):
            expected = "human or observation" if i % 2 == 0 else "gpt or function_call"
            raise DataError(f"{where}: {key}[{i + first}].from={turns[i + first]['from']!r}: expected {expected} "
                            "(human/observation and gpt/function_call take turns)")
    if system is not None and system != "":
        messages.insert(0, {"role": "system", "content": _string(system, where, "system")})
    return messages


def alpaca_messages(record: dict, where: str) -> list:
    """An alpaca record's conversation up to its user message: system, history, instruction + input."""
    messages = _system(record, where)
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: history must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise DataError(f"{where}: history[{i}] must be a [question, answer] pair of strings")
        messages += [user(pair[0]), assistant(pair[1])]
    instruction = _string(record["instruction"], where, "instruction")
    query = _string(record.get("input") or "", where, "input")
    messages.append(user(f"{instruction}\n{query}" if query else instruction))
    return messages


def _system(record: dict, where: str) -> list:
    system = record.get("system")
    return [{"role": "system", "content": _string(system, where, "system")}] if system else []


def src_tgt_messages(record: dict, src: list, tgt: list, where: str) -> list:
    """PaddleNLP's turns (src[k] answered by tgt[k]; src may hold one more) as messages."""
    messages = _system(record, where)
    for k, question in enumerate(src):
        messages.append(user(question))
        if k < len(tgt):
            messages.append(assistant(tgt[k]))
    return messages


def conversation(record: dict, fmt: str, where: str) -> tuple[list, str]:
    """The messages of a messages- or sharegpt-format record, and the `where` its message errors start with."""
    if fmt == "sharegpt":
        return sharegpt_messages(record, where), f"{where}: {_chat_key(record)}"
    key = _chat_key(record)
    value = record[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: {key} is {type(value).__name__}, expected a list of {{\"role\", \"content\"}} objects")
    return [_message(m) for m in value], f"{where}: {key}"


# ---- SFT ------------------------------------------------------------------------------------------------

def _sft_src_tgt(record: dict, where: str) -> list:
    src, tgt = _strings(record["src"], where, "src"), _strings(record["tgt"], where, "tgt")
    if len(src) != len(tgt) or not src:
        raise DataError(f"{where}: src has {len(src)} turns but tgt has {len(tgt)} (need the same number, at least 1)")
    return src_tgt_messages(record, src, tgt, where)


def _sft_messages(record: dict, fmt: str, where: str) -> tuple[list, str]:
    if fmt in ("messages", "sharegpt"):
        return conversation(record, fmt, where)
    if fmt == "alpaca":
        return alpaca_messages(record, where) + [assistant(_string(record["output"], where, "output"))], where
    if fmt == "src_tgt":
        return _sft_src_tgt(record, where), where
    prompt = _messages(record["prompt"], where, "prompt")
    completion = record["completion"]
    completion = [assistant(_string(completion, where, "completion"))] if isinstance(completion, str) \
        else _messages(completion, where, "completion")
    return prompt + completion, where


def read_sft(paths, fmt: str = "auto") -> list[Dialogue]:
    """Every record of `paths` (a path or a list) as a Dialogue ending with a non-empty assistant message."""
    out = []
    for where, _, record, detected in _records(paths, fmt, "sft", "examples"):
        messages, at = _sft_messages(record, detected, where)
        messages = check_messages(messages, at, ("assistant",))
        if not (messages[-1]["content"] or "").strip() and not messages[-1].get("tool_calls"):
            raise DataError(f"{where}: the last assistant message is empty (nothing to learn)")
        out.append(Dialogue(messages, _tools(record, where)))
    return out


# ---- preference (DPO, RM) and pointwise (KTO) ----------------------------------------------------------------

def _prompt(messages: list, where: str, tools) -> Dialogue:
    return Dialogue(check_messages(messages, where, ("user", "tool")), tools)


def _paddle_preference(record: dict, where: str, kind: str) -> PreferenceExample:
    src, tgt = _strings(record["src"], where, "src"), _strings(record["tgt"], where, "tgt")
    if len(src) != len(tgt) + 1:
        raise DataError(f"{where}: src has {len(src)} turns and tgt {len(tgt)}: src needs exactly one more "
                        "(the turn the responses answer)")
    response, sort = record["response"], record["sort"]
    if not isinstance(response, list) or not all(isinstance(r, str) for r in response):
        raise DataError(f"{where}: response must be a list of strings")
    if not isinstance(sort, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sort):
        raise DataError(f"{where}: sort must be a list of numbers")
    if len(response) != len(sort):
        raise DataError(f"{where}: response has {len(response)} entries but sort has {len(sort)} "
                        "(need one sort per response)")
    n = 2 if kind == "preference" else 1
    if len(response) != n:
        need = "2 (chosen and rejected, in any order)" if n == 2 else "1 (KTO data is pointwise)"
        raise DataError(f"{where}: response has {len(response)} entries, need {need}")
    for i, text in enumerate(response):
        _string(text, where, f"response[{i}]", empty_ok=False)
    _string(src[-1], where, "the last src", empty_ok=False)
    prompt = _prompt(src_tgt_messages(record, src, tgt, where), where, None)
    if n == 1:
        if sort[0] not in (0, 1):
            raise DataError(f"{where}: sort is {sort}, need [1] (desirable) or [0] (undesirable)")
        return PreferenceExample(prompt, (assistant(response[0]),), int(sort[0]))
    if sort[0] == sort[1]:
        raise DataError(f"{where}: sort values are equal ({sort[0]}): the higher one marks the chosen response")
    chosen, rejected = response if sort[0] > sort[1] else response[::-1]
    return PreferenceExample(prompt, (assistant(chosen), assistant(rejected)), 1)


def _implicit_prompt(record: dict, where: str) -> tuple[list, dict, dict]:
    """TRL's implicit prompt: the messages chosen and rejected share, then one assistant message each."""
    chosen, rejected = record["chosen"], record["rejected"]
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise DataError(f"{where}: chosen and rejected must be lists of messages (whole conversations) when there "
                        "is no prompt key")
    chosen, rejected = [_message(m) for m in chosen], [_message(m) for m in rejected]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if len(chosen) - shared != 1 or len(rejected) - shared != 1:
        raise DataError(f"{where}: chosen and rejected must be the same conversation up to one final assistant "
                        f"message each (they differ from message {shared} on)")
    return chosen[:shared], chosen[-1], rejected[-1]


def _preference(record: dict, fmt: str, where: str, kind: str) -> PreferenceExample:
    if fmt == "src_tgt":
        return _paddle_preference(record, where, kind)
    tools = _tools(record, where)
    at = where
    if fmt == "trl":
        prompt = _messages(record["prompt"], where, "prompt")
        at = f"{where}: prompt"
    elif fmt == "trl_implicit":
        prompt, chosen, rejected = _implicit_prompt(record, where)
        record = {"chosen": chosen, "rejected": rejected}
        at = f"{where}: chosen"
    elif fmt == "alpaca":
        prompt = alpaca_messages(record, where)
    else:
        prompt, at = conversation(record, "sharegpt", where)
        if kind == "kto":  # the last gpt message is the response the tag judges
            if len(prompt) < 2 or prompt[-1]["role"] != "assistant":
                raise DataError(f"{at}: must end with the gpt message the kto_tag judges")
            response = _response(prompt[-1], where, "the last gpt message")
            return PreferenceExample(_prompt(prompt[:-1], at, tools), (response,), _label(record["kto_tag"], where, "kto_tag"))
        record = {k: (_sharegpt_turn(record[k], f"{where}: {k}") if isinstance(record[k], dict) else record[k])
                  for k in ("chosen", "rejected")}
    prompt = _prompt(prompt, at, tools)
    if kind == "kto":
        response_key, label_key = ("completion", "label") if fmt == "trl" else ("output", "kto_tag")
        return PreferenceExample(prompt, (_response(record[response_key], where, response_key),),
                                 _label(record[label_key], where, label_key))
    return PreferenceExample(prompt, (_response(record["chosen"], where, "chosen"),
                                      _response(record["rejected"], where, "rejected")), 1)


def read_preference(paths, fmt: str = "auto", kind: str = "dpo") -> list[PreferenceExample]:
    """Every record of `paths` as a PreferenceExample: kind="dpo" (DPO, RM) responses = (chosen, rejected),
    label 1; kind="kto" responses = (response,), label 1 desirable / 0 undesirable, and the data as a whole
    (all `paths`) must hold both labels."""
    if kind not in ("dpo", "kto"):
        raise ValueError(f"kind={kind!r}: dpo or kto")
    table = "preference" if kind == "dpo" else "kto"
    out = [_preference(record, detected, where, table)
           for where, _, record, detected in _records(paths, fmt, table, "examples")]
    if kind == "kto" and len(out) > 1 and len({e.label for e in out}) == 1:
        which = "desirable" if out[0].label else "undesirable"
        raise DataError(f"{', '.join(data_paths(paths))}: every example is {which} (KTO needs both desirable and "
                        "undesirable ones: sort [1] and [0], label true and false, kto_tag true and false)")
    return out


# ---- prompts (infer, RL) --------------------------------------------------------------------------------------

def _prompt_src_tgt(record: dict, where: str, purpose: str) -> tuple[list, Optional[str]]:
    src = record["src"]
    if not (isinstance(src, str) or (isinstance(src, list) and src)):
        raise DataError(f"{where}: src must be a string or a non-empty list of strings")
    src = _strings(src, where, "src")
    tgt = _strings(record.get("tgt", []), where, "tgt")
    reference = None
    if purpose == "rl" and tgt and len(tgt) == len(src):  # SFT data: its last answer is the reference
        reference, tgt = tgt[-1], tgt[:-1]
    if len(tgt) != len(src) - 1:
        also = " (or, for RL, the same number: the last is the reference)" if purpose == "rl" else ""
        raise DataError(f"{where}: src has {len(src)} turns, so tgt needs the {len(src) - 1} earlier answers{also} "
                        f"(got {len(tgt)})")
    return src_tgt_messages(record, src, tgt, where), reference


def _final_answer(messages: list, where: str, purpose: str) -> tuple[list, Optional[str]]:
    """RL: a conversation ending with an assistant message; that message is the reference."""
    if purpose == "rl" and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return messages[:-1], _string(messages[-1].get("content"), where, "the final assistant message (the reference)")
    return messages, None


def _prompt_of(record: dict, fmt: str, where: str, purpose: str) -> tuple[list, str, Optional[str]]:
    if fmt == "src_tgt":
        messages, reference = _prompt_src_tgt(record, where, purpose)
        return messages, where, reference
    if fmt in ("messages", "sharegpt"):
        messages, at = conversation(record, fmt, where)
        messages, reference = _final_answer(messages, where, purpose)
        return messages, at, reference
    if fmt == "alpaca":
        output = record.get("output")
        return alpaca_messages(record, where), where, None if output is None else _string(output, where, "output")
    key = next((k for k in REFERENCE_KEYS if record.get(k) is not None), None)
    reference = None if key is None else _string(record[key], where, key)
    return _messages(record["prompt"], where, "prompt"), f"{where}: prompt", reference


def read_prompts(paths, fmt: str = "auto", purpose: str = "infer") -> list[Prompt]:
    """Every record of `paths` as a Prompt ending with a user (or tool) message, its record kept as read and
    its number (line, record or row) as lineno. The reference answer: for RL, src_tgt's last tgt when src and
    tgt have as many turns, and a messages/sharegpt conversation's final assistant message; for both purposes
    alpaca's `output` and a trl record's `reference`, `answer` or `solution` (the first present)."""
    if purpose not in ("infer", "rl"):
        raise ValueError(f"purpose={purpose!r}: infer or rl")
    out = []
    for where, number, record, detected in _records(paths, fmt, "prompts", "prompts"):
        messages, at, reference = _prompt_of(record, detected, where, purpose)
        dialogue = Dialogue(check_messages(messages, at, ("user", "tool")), _tools(record, where))
        out.append(Prompt(dialogue, reference, record, number))
    return out


# ---- a stage's data settings -----------------------------------------------------------------------------------

def read(kind: str, paths, fmt: str = "auto", weights=None, seed: int = 0) -> list:
    """`paths` (one or a list) read as `kind` data (sft, dpo, kto, rl, infer); with `weights`, each path read
    on its own and mixed by them (llmx.data.mixture), else every example of every path in order."""
    def one(p):
        if kind == "sft":
            return read_sft(p, fmt)
        if kind in ("dpo", "kto"):
            return read_preference(p, fmt, kind)
        return read_prompts(p, fmt, kind)

    if weights is None:
        return one(paths)
    from llmx.data.mixture import mix

    return mix([one(p) for p in data_paths(paths)], list(weights), seed)


def read_splits(d, kind: str, seed: int) -> dict:
    """{"train": ..., "eval": ...} of a stage's checked `data` block (eval: [] when there is none)."""
    return {"train": read(kind, d.train, d.format, d.weights, seed),
            "eval": read(kind, d.eval, d.format) if d.eval else []}
