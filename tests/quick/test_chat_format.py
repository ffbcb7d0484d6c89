"""llmx.data.chat without a model (paddle-free): rendering as transformers' render_jinja_template renders (named
templates, tools, {% generation %}, raise_exception, strftime_now), labels on assistant turns only, and the
one-line refusals."""
from __future__ import annotations

import pytest

from llmx.data.chat import ChatFormat, TemplateError
from llmx.data.dialogue import Dialogue

CHATML = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class Chars:
    """One id per character, <|...|> markers as single special ids (1000 + their index): every position is readable."""
    MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<s>", "</s>"]
    bos_token_id, eos_token_id = 1005, 1006
    special_tokens_map = {"bos_token": "<s>", "eos_token": "</s>"}
    all_special_ids = [1005, 1006]

    def __init__(self, template=None):
        self.llmx_chat_template = template

    def get_added_vocab(self):
        return {m: 1000 + i for i, m in enumerate(self.MARKERS)}

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            hit = next((m for m in self.MARKERS if text.startswith(m, i)), None)
            ids.append(1000 + self.MARKERS.index(hit) if hit else ord(text[i]))
            i += len(hit) if hit else 1
        return {"input_ids": ids}

    def text(self, ids):
        return "".join(self.MARKERS[i - 1000] if i >= 1000 else chr(i) for i in ids)


def _talk(*contents):
    roles = ["user", "assistant"] * len(contents)
    return Dialogue(tuple({"role": r, "content": c} for r, c in zip(roles, contents)))


def test_assistant_turns_and_their_end_of_turn_are_what_is_learned():
    tok = Chars(CHATML)
    turns = ChatFormat(tok).turns(_talk("hi", "yo", "more?", "no"))
    assert [(tok.text(p), tok.text(a)) for p, a in turns] == [("<|user|>hi<|end|><|assistant|>", "yo<|end|>"),
                                                              ("<|user|>more?<|end|><|assistant|>", "no<|end|>")]
    assert ChatFormat(tok).end_of_turn_ids() == [1004]
    assert tok.text(ChatFormat(tok).prompt_ids(_talk("hi", "yo", "more?"))) == \
        "<|user|>hi<|end|><|assistant|>yo<|end|><|user|>more?<|end|><|assistant|>"


def test_render_equals_transformers_for_named_templates_tools_and_generation_blocks():
    render = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
    default = CHATML.replace("{{ m.content }}", "{% generation %}{{ m.content }}{% endgeneration %}")
    tool_use = "{{ tools | tojson(indent=1) }}|" + CHATML + "{{ strftime_now('%Y') | length }}"
    named = [{"name": "default", "template": default}, {"name": "tool_use", "template": tool_use}]
    messages = [{"role": "user", "content": "Zeit? «jetzt»"}, {"role": "assistant", "content": "now"}]
    chat = ChatFormat(Chars(named))
    for template, with_tools in ((default, None), (tool_use, tools)):
        ours = chat.render(messages, with_tools, add_generation_prompt=True)
        (theirs,), _ = render(conversations=[messages], tools=with_tools, chat_template=template,
                              add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        assert ours == theirs
    assert chat.render(messages, tools).startswith('[\n {\n  "type": "function"')


def test_refusals_are_one_line():
    bad = "{% for m in messages %}{% if m.role == 'assistant' %}{{ raise_exception('no assistants here') }}{% endif %}{% endfor %}"
    with pytest.raises(TemplateError, match=r"^chat template: no assistants here$"):
        ChatFormat(Chars(bad)).turns(_talk("hi", "yo"))
    with pytest.raises(TemplateError, match=r"^chat template: line 1: "):
        ChatFormat(Chars("{% for m in messages %}")).render([])
    with pytest.raises(TemplateError, match=r"named templates \['chatml'\] and none is 'default'"):
        ChatFormat(Chars([{"name": "chatml", "template": CHATML}])).render([])
    plain = ChatFormat(Chars(None))
    tool_turn = Dialogue(_talk("hi").messages + ({"role": "tool", "content": "42"},))
    with pytest.raises(TemplateError, match="no chat template, and llmx's plain template takes user and assistant"):
        plain.prompt_ids(tool_turn)


def test_plain_template_without_a_chat_template():
    tok = Chars(None)
    system = Dialogue(({"role": "system", "content": "S"},) + _talk("a", "b").messages)
    (prompt, answer), = ChatFormat(tok).turns(system)
    assert tok.text(prompt) == "<s>Q: S\n\na\nA:" and tok.text(answer) == "b</s>"
