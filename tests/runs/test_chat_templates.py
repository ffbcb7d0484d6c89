"""Chat templates on a real vocabulary: llmx's rendering (llmx.data.chat over the tokenizer stages build) against
transformers' `apply_chat_template` on the same checkpoint's tokenizer, for the templates people ship. The
templates are written here from their public definitions (the checkpoints' tokenizer_config.json); SmolLM2's
own comes with the real checkpoint."""
from __future__ import annotations

import pytest
from helpers import compose

from llmx.data.chat import ChatFormat, TemplateError
from llmx.data.dialogue import Dialogue

CHATML_TOOLS = (  # ChatML that lists tools in a system turn and renders tool calls and results, as Qwen2.5's does
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
    "{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{%- for c in m.tool_calls or [] %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TEMPLATES = {
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"),
    "qwen_v1": (  # Qwen (v1) chat: ChatML with its default system prompt
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "chatglm3": (
        "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n {{ message['content'] }}"
        "{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"),
    "llama2_mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    "chatml_tools": CHATML_TOOLS,
}

APPENDS_EOS = ("llama3", "gemma", "chatglm3")
U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
TALK = [U("What is the capital of France?"), A("Paris."), U("And of Italy? Answer in 1 word, über-kurz."), A(" Rome ")]
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Today's weather",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_TALK = [U("Weather in Paris?"),
             {"role": "assistant", "content": None,
              "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
             {"role": "tool", "content": "sunny, 21°C"}, A("Sunny and 21°C.")]


@pytest.fixture(scope="module")
def tokenizers(real_model_dir, real_gguf):
    """(llmx's tokenizer as every stage builds it, transformers' tokenizer of the same GGUF)."""
    from transformers import AutoTokenizer

    from llmx.engine.model import build_tokenizer

    ours = build_tokenizer(compose("model=llama", f"model.name_or_path={real_model_dir}").model)
    theirs = AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)
    return ours, theirs


def _cases():
    yield "smollm2", TALK, None
    for name in TEMPLATES:
        yield name, (TOOL_TALK if name == "chatml_tools" else TALK), (TOOLS if name == "chatml_tools" else None)


@pytest.mark.parametrize("name, messages, tools", list(_cases()), ids=[c[0] for c in _cases()])
def test_ids_equal_apply_chat_template(tokenizers, name, messages, tools):
    ours, theirs = tokenizers
    template = ours.llmx_chat_template if name == "smollm2" else TEMPLATES[name]
    chat = ChatFormat(ours, template)
    whole = Dialogue(tuple(messages), tuple(tools) if tools else None)
    prompt = Dialogue(tuple(messages[:-1]), whole.tools)
    # transformers' GGUF tokenizer names <|im_start|> as eos; the file (and llmx) says <|im_end|>: render both alike
    reference = dict(chat_template=template, tools=tools, bos_token=ours.bos_token, eos_token=ours.eos_token)
    if name != "llama2_mistral":  # its template has no generation prompt
        assert chat.prompt_ids(prompt) == theirs.apply_chat_template(list(messages[:-1]), add_generation_prompt=True,
                                                                     **reference)
    expected = theirs.apply_chat_template(list(messages), **reference)
    turns = chat.turns(whole)
    ids = [i for p, a in turns for i in p + a]
    learned = [theirs.decode(a) for _, a in turns]
    assistant_texts = [m["content"] for m in messages if m["role"] == "assistant"]
    # ChatGLM3's turns end at the next role tag, and Llama 3's and Gemma's end-of-turn markers are no tokens of this
    # vocabulary: there llmx appends eos to the last answer, so the model learns to stop
    n = len(ids) - (name in APPENDS_EOS)
    assert ids[:n] == expected[:n] and len(expected) - n <= 2  # what follows the last end of turn is whitespace
    for text, content in zip(learned, assistant_texts):
        if content and name not in APPENDS_EOS:
            assert content.strip() in text
        elif content:  # markers that are no tokens here merge with the answer's last characters: the boundary token
            assert text.strip()[:4] in content  # goes to the prompt
    if name in ("smollm2", "qwen_v1", "chatml_tools"):
        assert learned[-1].endswith("<|im_end|>") and learned[0].startswith(("Paris", "<tool_call>"))
    if name in APPENDS_EOS:
        assert turns[-1][1][-1] == ours.eos_token_id


def test_default_system_prompt_is_rendered_once_and_replaced_by_a_given_one(tokenizers):
    ours, theirs = tokenizers
    chat = ChatFormat(ours)
    with_system = Dialogue(({"role": "system", "content": "Be terse."},) + tuple(TALK))
    ids = [i for p, a in chat.turns(with_system) for i in p + a]
    text = theirs.decode(ids)
    assert "Be terse." in text and "SmolLM" not in text
    default = theirs.decode([i for p, a in chat.turns(Dialogue(tuple(TALK))) for i in p + a])
    assert default.count("You are a helpful AI assistant named SmolLM") == 1


def test_a_template_that_rewrites_earlier_turns_is_refused_in_one_line(tokenizers):
    ours, _ = tokenizers
    # renders only the last assistant message in full: rendering up to turn 1 is not a prefix of the whole
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}..."
                "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateError) as err:
        ChatFormat(ours, template).turns(Dialogue(tuple(TALK)))
    assert "assistant message 1 cannot be isolated" in str(err.value) and "\n" not in str(err.value)
