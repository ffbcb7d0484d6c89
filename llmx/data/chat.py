"""Conversations to token ids: the checkpoint's chat template rendered as transformers renders it, or
llmx's plain template for tokenizers that have none. Paddle-free (jinja2; the tokenizer is passed in).

Why not PaddleNLP's `encode_chat_inputs`: it renders every turn on its own and splits the text on the
answers, so any template whose output is not turn-local (one that adds a default system prompt when the
conversation has none, as SmolLM2 and Qwen2.5 ship) fails with `AssertionError: Get non_learnable_parts
len`. Here the whole conversation is rendered once, in the sandboxed jinja2 environment transformers'
`apply_chat_template` uses (same options, globals, filters and arguments), and tokenized at once, so the
ids equal `apply_chat_template(..., tokenize=True)`'s. What is learned is found by rendering growing
prefixes: an assistant message contributes the text between the generation prompt of the messages
before it and the rendering that ends with it (its content and end-of-turn token; trailing whitespace
is left to the next turn). A template under which that text is not a prefix of the whole is refused.

The plain template (documented in README and DESIGN.md) is llmx's own for tokenizers without one:

    <bos>Q: <user 1>\\nA:<assistant 1><eos>Q: <user 2>\\nA:<assistant 2><eos>

a system message goes before the first user message (`<system>\\n\\n<user 1>`); prompts and answers are
tokenized piece by piece, as llmx always has.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Optional, Sequence

from llmx.data.dialogue import Dialogue
from llmx.errors import DataError

PROMPT_TEMPLATE = "Q: {src}\nA:"


class TemplateError(DataError):
    """A chat template that cannot render a conversation, or cannot be split into what is learned."""


@lru_cache(maxsize=16)
def _compiled(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' assistant masks;
        templates that use it must render, so the block renders as its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja2's own tojson HTML-escapes and sorts keys; templates expect plain JSON, as transformers gives
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template: line {e.lineno}: {e.message}") from None


def select_template(template: Any, tools: Optional[Sequence] = None) -> Optional[str]:
    """The template source to render: a string as it is; of named templates (tokenizer_config.json's list of
    {"name", "template"}), `tool_use` when there are tools and it exists, else `default` (as transformers)."""
    if template is None or isinstance(template, str):
        return template
    named = {t["name"]: t["template"] for t in template} if isinstance(template, list) else dict(template)
    if tools and "tool_use" in named:
        return named["tool_use"]
    if "default" in named:
        return named["default"]
    raise TemplateError(f"chat template: the tokenizer has named templates {sorted(named)} and none is 'default'")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatFormat:
    """How one tokenizer turns dialogues into ids. `template`: the chat template source (string or named
    templates); by default the one llmx.engine.model.build_tokenizer read from the tokenizer's files."""

    def __init__(self, tokenizer, template: Any = "from-tokenizer") -> None:
        self.tokenizer = tokenizer
        self.template = getattr(tokenizer, "llmx_chat_template", None) if template == "from-tokenizer" else template

    @property
    def templated(self) -> bool:
        return self.template is not None

    # ------------------------------------------------------------------------------------ rendering

    def special_tokens(self) -> dict:
        """The special tokens by name (bos_token, eos_token, ...), the variables transformers passes."""
        found = getattr(self.tokenizer, "special_tokens_map", None) or {}
        return {k: (list(map(str, v)) if isinstance(v, (list, tuple)) else str(v)) for k, v in found.items()}

    def render(self, messages: Sequence[dict], tools: Optional[Sequence] = None,
               add_generation_prompt: bool = False) -> str:
        import jinja2

        source = select_template(self.template, tools)
        try:
            return _compiled(source).render(messages=[dict(m) for m in messages],
                                            tools=list(tools) if tools else None, documents=None,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens())
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template: {e}") from None

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------- token ids

    def prompt_ids(self, dialogue: Dialogue) -> list[int]:
        """What a model continues to answer `dialogue` (ending with a user or tool message)."""
        if self.templated:
            return self.encode_text(self.render(dialogue.messages, dialogue.tools, add_generation_prompt=True))
        turns = self._plain_turns(dialogue.then({"role": "assistant", "content": ""}))
        return [i for p, a in turns[:-1] for i in p + a] + turns[-1][0]

    def turns(self, dialogue: Dialogue) -> list[tuple[list[int], list[int]]]:
        """(ids not learned, ids learned) for each assistant message of `dialogue`, in order; concatenated
        they are the conversation up to its last assistant message (its end-of-turn included)."""
        if not self.templated:
            return self._plain_turns(dialogue)
        messages, tools = dialogue.as_list(), dialogue.tools
        whole = self.render(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.render(messages[:i], tools, add_generation_prompt=True)
            upto = self.render(messages[: i + 1], tools)
            if not (upto.startswith(before) and whole.startswith(upto)):
                raise TemplateError(
                    f"chat template: assistant message {i} cannot be isolated (rendering the conversation up to it "
                    "is not a prefix of rendering the whole; the template changes earlier turns as it goes on), "
                    "so what to learn is unknown: use a turn-local template (stage.data.chat_template) or data "
                    "with one assistant message per example")
            end = max(len(upto.rstrip()), len(before))
            spans.append((len(before), end))
        ids = self.encode_text(whole[: spans[-1][1]])
        turns, done = [], 0
        for start, end in spans:
            # the token boundary at a character position: where tokenizing the text up to it stops agreeing
            a = _common_prefix(self.encode_text(whole[:start]), ids)
            b = max(_common_prefix(self.encode_text(whole[:end]), ids), a)
            turns.append((ids[done:a], ids[a:b]))
            done = b
        last_prompt, last_answer = turns[-1]
        if last_answer and self.eos is not None and last_answer[-1] not in self.special_ids():
            # a template whose assistant turns end without a special token (the next role tag ends them,
            # as in ChatGLM3): the model still has to learn to stop
            turns[-1] = (last_prompt, last_answer + [self.eos])
        return turns

    @property
    def eos(self) -> Optional[int]:
        return self.tokenizer.eos_token_id

    def special_ids(self) -> set:
        """Special and added tokens (a template's role and end-of-turn markers are added tokens that a
        GGUF's tokenizer need not list among its special ones)."""
        ids = set(getattr(self.tokenizer, "all_special_ids", []) or []) | {self.eos}
        added = getattr(self.tokenizer, "get_added_vocab", None)
        return ids | set(added().values()) if added else ids

    def end_of_turn_ids(self) -> list[int]:
        """Tokens that end an assistant turn under the template (e.g. <|im_end|>, <|eot_id|>,
        <end_of_turn>): generation stops at them as at eos."""
        if not self.templated:
            return []
        try:
            answer = self.turns(Dialogue(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"})))[-1][1]
        except DataError:
            return []
        return [answer[-1]] if answer and answer[-1] in self.special_ids() else []

    def _plain_turns(self, dialogue: Dialogue) -> list[tuple[list[int], list[int]]]:
        messages = list(dialogue.messages)
        system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
        turns = []
        for k in range(0, len(messages), 2):
            pair = messages[k:k + 2]
            if [m["role"] for m in pair] != ["user", "assistant"][: len(pair)] or len(pair) < 2:
                raise TemplateError(
                    f"the tokenizer has no chat template, and llmx's plain template takes user and assistant "
                    f"messages in turns (message {k + (system is not None)} is {pair[-1]['role']}); "
                    "use a tokenizer with a chat template for tool turns (model.tokenizer)")
            user = pair[0]["content"] if not (k == 0 and system) else f"{system}\n\n{pair[0]['content']}"
            answer = pair[1]["content"] or ""
            turns.append((self.encode_text(PROMPT_TEMPLATE.format(src=user)),
                          (self.encode_text(answer) if answer else []) + [self.eos]))
        if self.tokenizer.bos_token_id is not None:
            turns[0] = ([self.tokenizer.bos_token_id] + turns[0][0], turns[0][1])
        return turns
