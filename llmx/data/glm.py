"""The GLM encoding (ChatGLM v1, `Family.encoding == "glm"`): what ChatGLM-6B was trained on, as its tokenizer
and modelling code build it.

    ids       = prompt + [gMASK] + <sop> + answer + <eop>        (<sop> is the tokenizer's bos, <eop> its eos)
    positions = [0, 1, ..., c-1, m, m, ..., m]                     c = index of <sop>, m = index of [gMASK]
    blocks    = [0, 0, ..., 0,   1, 2, ..., n-c]
    mask[i,j] = j < c or j <= i                                    (True = may attend: the prompt is seen whole,
                                                                    the answer causally)

The prompt is ChatGLM-6B's chat prompt: the question alone, or with history
`[Round 0]\\n问：q\\n答：r\\n...[Round k]\\n问：q\\n答：`; a system message goes before the first question
(`<system>\\n\\n<question>`). Only the last answer is learned (one [gMASK] span per example, as the reference
trains). Position ids and mask are found from the ids (the <sop> and [gMASK] indices), as the reference does,
so one function serves training batches and generation prompts (llmx.families.chatglm.GlmLayout, which the
engine's collator and generation read too). Paddle-free.
"""
from __future__ import annotations

from typing import Sequence

from llmx.data.chat import TemplateError
from llmx.data.dialogue import Dialogue
from llmx.data.sft import SftEncoder
from llmx.families.chatglm import GlmLayout


def chat_prompt(messages: Sequence[dict]) -> str:
    """ChatGLM-6B's prompt text for `messages` ending with the question to answer."""
    messages = list(messages)
    system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise TemplateError(f"ChatGLM v1's prompt takes user and assistant messages in turns, ending with user "
                            f"(got {', '.join(roles)})")
    if system:
        messages[0] = {**messages[0], "content": f"{system}\n\n{messages[0]['content']}"}
    pairs = [(messages[k]["content"], messages[k + 1]["content"] or "") for k in range(0, len(messages) - 1, 2)]
    query = messages[-1]["content"]
    if not pairs:
        return query
    rounds = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(pairs))
    return rounds + f"[Round {len(pairs)}]\n问：{query}\n答："


class GlmEncoder(SftEncoder):
    """SftEncoder's truncation and shifting over the GLM encoding: one (prompt + [gMASK] + <sop>, answer + <eop>)
    turn per dialogue."""

    def __init__(self, tokenizer, max_length: int, src_length: int) -> None:
        super().__init__(tokenizer, max_length, src_length)
        self.layout = GlmLayout(tokenizer)

    def prompt_ids(self, dialogue: Dialogue) -> list[int]:
        """A dialogue ending with the question -> the ids the answer is generated from."""
        return self.chat.encode_text(chat_prompt(dialogue.messages)) + [self.layout.gmask, self.layout.bos]

    def turn_ids(self, dialogue: Dialogue) -> list[tuple[list[int], list[int]]]:
        messages = dialogue.as_list()
        if messages[-1]["role"] != "assistant":
            raise TemplateError("an SFT example ends with the assistant's answer")
        answer = messages[-1]["content"] or ""
        prompt = self.prompt_ids(Dialogue(tuple(messages[:-1])))
        return [(prompt, (self.chat.encode_text(answer) if answer else []) + [self.layout.eos])]
