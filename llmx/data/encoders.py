"""The SFT encoder of a tokenizer's model family: prompt then answer (llmx.data.sft), or ChatGLM v1's GLM encoding
(llmx.data.glm). One module above both, so neither imports the other."""
from __future__ import annotations

from llmx.data.glm import GlmEncoder
from llmx.data.sft import SftEncoder


def sft_encoder(tokenizer, max_length: int, src_length: int) -> SftEncoder:
    """The encoder of the tokenizer's model family (`llmx_encoding`, set by llmx.engine.model.build_tokenizer from
    Family.encoding): the GLM encoding for ChatGLM v1, else prompt then answer."""
    if getattr(tokenizer, "llmx_encoding", "causal") == "glm":
        return GlmEncoder(tokenizer, max_length, src_length)
    return SftEncoder(tokenizer, max_length, src_length)
