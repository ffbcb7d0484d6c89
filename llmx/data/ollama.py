"""A chat template as an Ollama Modelfile (for an exported GGUF): FROM, the template as Ollama's Go template, stop
tokens, SYSTEM. Paddle-free; the stage (llmx.stages.convert) reads the template and writes the file.

Ollama renders prompts with Go's text/template over `.Messages` (each with `.Role` and `.Content`), and puts
the Modelfile's SYSTEM first when a conversation has no system message. No library turns a Jinja chat
template into one, so it is derived here by rendering the Jinja template (as transformers does:
llmx.data.chat) on sentinel conversations and cutting the text at the sentinels:

    [system S, user U1, assistant A1, user U2, assistant A2] -> seg0 S seg1 U1 seg2 A1 seg3 U2 seg4 A2 seg5
    generation prompt (gen)  = render([user], True) minus render([user], False)
    assistant suffix         = seg5;  user prefix = seg3 minus it;  user suffix = seg2 minus gen
    system suffix            = seg1 minus the user prefix;  head + system prefix = seg0

A template renders the same conversation with no system message either as `head + user prefix ...`
(then head is what comes before every conversation) or as `seg0 + D + system suffix ...`: D is a default
system prompt, written as SYSTEM. The template then emits, per message, `prefix Content suffix`, and the
generation prompt after a last user message. The result is checked by rendering it the same way on other
conversations against the Jinja template; a template that does not decompose (Gemma's, which folds the
system prompt into the first user turn; anything that depends on more than the role) gets a Modelfile
without TEMPLATE and the reason. A leading BOS the template writes is left to llama.cpp, which adds it
itself when the file says `add_bos_token` (twice would be wrong).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

SENTINELS = {"system": "\u00abLLMX-SYSTEM\u00bb", "u1": "\u00abLLMX-USER-1\u00bb", "a1": "\u00abLLMX-ASSISTANT-1\u00bb",
             "u2": "\u00abLLMX-USER-2\u00bb", "a2": "\u00abLLMX-ASSISTANT-2\u00bb"}


@dataclass(frozen=True)
class Turns:
    """The pieces a chat template puts around each role's content."""
    head: str
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # also the generation prompt
    assistant_suffix: str
    default_system: Optional[str]


def _renderer(template: str, special: dict):
    from llmx.data.chat import ChatFormat

    fmt = ChatFormat(SimpleNamespace(special_tokens_map=special), template)
    return lambda messages, gen=False: fmt.render(messages, add_generation_prompt=gen)


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


class NotDecomposable(ValueError):
    pass


def decompose(template: str, special: dict) -> Turns:
    """The pieces of `template` (see the module's docstring); NotDecomposable with the reason otherwise."""
    from llmx.data.chat import TemplateError

    render = _renderer(template, special)
    s = SENTINELS
    full = _msgs(("system", s["system"]), ("user", s["u1"]), ("assistant", s["a1"]), ("user", s["u2"]),
                 ("assistant", s["a2"]))
    try:
        text = render(full)
        no_system = render(full[1:])
        one, one_gen = render(full[1:2]), render(full[1:2], True)
    except TemplateError as e:
        raise NotDecomposable(f"the template does not render a plain conversation ({e})") from None
    segs, rest = [], text
    for key in ("system", "u1", "a1", "u2", "a2"):
        if rest.count(s[key]) != 1:
            raise NotDecomposable(f"a {key[0]} message's content appears {rest.count(s[key])} times, not once")
        before, rest = rest.split(s[key])
        segs.append(before)
    segs.append(rest)
    if not one_gen.startswith(one):
        raise NotDecomposable("the generation prompt is not added at the end")
    gen = one_gen[len(one):]
    assistant_suffix = segs[5]
    if not (segs[2].endswith(gen) and segs[4] == segs[2] and segs[3].startswith(assistant_suffix)):
        raise NotDecomposable("the text between turns depends on more than the role")
    user_prefix = segs[3][len(assistant_suffix):]
    user_suffix = segs[2][:len(segs[2]) - len(gen)]
    if not segs[1].endswith(user_prefix):
        raise NotDecomposable("the system prompt is not a turn of its own")
    system_suffix = segs[1][:len(segs[1]) - len(user_prefix)]
    tail = no_system.split(s["u1"])[0]
    if not tail.endswith(user_prefix):
        raise NotDecomposable("the first user turn starts differently without a system message")
    tail = tail[:len(tail) - len(user_prefix)]
    if segs[0].startswith(tail):  # no default system prompt: tail comes before every conversation
        turns = Turns(tail, segs[0][len(tail):], system_suffix, user_prefix, user_suffix, gen, assistant_suffix, None)
    elif tail.startswith(segs[0]) and tail.endswith(system_suffix) and len(tail) > len(segs[0]) + len(system_suffix):
        default = tail[len(segs[0]):len(tail) - len(system_suffix)]
        turns = Turns("", segs[0], system_suffix, user_prefix, user_suffix, gen, assistant_suffix, default)
    else:
        raise NotDecomposable("what precedes a conversation without a system message is neither a fixed head "
                              "nor a default system prompt")
    _check(turns, render)
    return turns


def render_turns(turns: Turns, messages, gen: bool) -> str:
    """What the Go template written by go_template renders for `messages` (the default system prompt first when
    there is no system message, as Ollama puts it)."""
    if turns.default_system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": turns.default_system}] + list(messages)
    out = [turns.head]
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "system":
            out.append(turns.system_prefix + m["content"] + turns.system_suffix)
        elif m["role"] == "user":
            out.append(turns.user_prefix + m["content"] + turns.user_suffix + (turns.assistant_prefix if last and gen
                                                                              else ""))
        else:
            out.append(turns.assistant_prefix + m["content"] + ("" if last else turns.assistant_suffix))
    return "".join(out)


def _check(turns: Turns, render) -> None:
    convs = [_msgs(("user", "Hi there"), ("assistant", "Hello!"), ("user", "What is 2+2?")),
             _msgs(("system", "Be brief."), ("user", "One"), ("assistant", "1"), ("user", "Two"), ("assistant", "2"),
                   ("user", "Three"))]
    for conv in convs:
        if render_turns(turns, conv, True) != render(conv, True):
            raise NotDecomposable("the pieces found do not render other conversations as the template does")


def _go_text(text: str) -> str:
    if "{{" in text or '"""' in text:
        raise NotDecomposable("a piece of the template holds '{{' or '\"\"\"', which a Modelfile cannot quote")
    return text


def go_template(turns: Turns) -> str:
    """Ollama's Go template over .Messages for `turns` (no whitespace trimming: every piece is literal)."""
    t = {k: _go_text(v) for k, v in turns.__dict__.items() if isinstance(v, str)}
    return (f"{t['head']}{{{{ range $i, $m := .Messages }}}}{{{{ $last := eq (len (slice $.Messages $i)) 1 }}}}"
            f"{{{{ if eq $m.Role \"system\" }}}}{t['system_prefix']}{{{{ $m.Content }}}}{t['system_suffix']}"
            f"{{{{ else if eq $m.Role \"user\" }}}}{t['user_prefix']}{{{{ $m.Content }}}}{t['user_suffix']}"
            f"{{{{ if $last }}}}{t['assistant_prefix']}{{{{ end }}}}"
            f"{{{{ else if eq $m.Role \"assistant\" }}}}{t['assistant_prefix']}{{{{ $m.Content }}}}"
            f"{{{{ if not $last }}}}{t['assistant_suffix']}{{{{ end }}}}{{{{ end }}}}{{{{ end }}}}")


def _special_tokens(tok_config: dict) -> dict:
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = tok_config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def modelfile_text(gguf_name: str, template: Optional[str], tok_config: dict, add_bos: bool) -> dict:
    """{"text", "template" (bool), "why" (when no TEMPLATE), "turns"} of the Modelfile for `gguf_name`."""
    special = _special_tokens(tok_config)
    lines = [f"FROM ./{gguf_name}", ""]
    turns, why = None, None
    if template is None:
        why = "the tokenizer has no chat template"
    else:
        try:
            turns = decompose(template, special)
        except NotDecomposable as e:
            why = str(e)
    if turns is not None:
        bos = special.get("bos_token")
        if add_bos and bos and turns.head.startswith(bos):  # llama.cpp adds it (tokenizer.ggml.add_bos_token)
            turns = Turns(turns.head[len(bos):], *list(turns.__dict__.values())[1:])
        try:
            lines += ['TEMPLATE """' + go_template(turns) + '"""', ""]
        except NotDecomposable as e:
            turns, why = None, str(e)
    if turns is not None:
        stops = [turns.assistant_suffix.strip()] + [special[k] for k in ("eos_token",) if k in special]
        for stop in dict.fromkeys(s for s in stops if s):
            lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
        if turns.default_system is not None:
            lines += ["", 'SYSTEM """' + _go_text(turns.default_system) + '"""']
    elif "eos_token" in special:
        lines.append(f"PARAMETER stop {json.dumps(special['eos_token'], ensure_ascii=False)}")
    return {"text": "\n".join(lines).rstrip("\n") + "\n", "template": turns is not None, "why": why, "turns": turns}
