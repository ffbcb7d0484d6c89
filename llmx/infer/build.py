"""Engines over a built model (dynamic) or an exported program (static)."""
from __future__ import annotations

from typing import Optional

from llmx import families
from llmx.data.chat import ChatFormat
from llmx.engine.peft import SAME_FORWARD_WRAPPERS
from llmx.families import FAMILIES, Family
from llmx.infer.engine import Engine
from llmx.infer.runners import RUNNERS, RecomputeRunner, StaticRunner


def eos_ids(config, tokenizer) -> list[int]:
    """Where generation stops: eos, the config's eos ids, and the chat template's end-of-turn token (a
    checkpoint's eos need not be it: SmolLM2's GGUF names <|im_start|>)."""
    ids = {tokenizer.eos_token_id, *ChatFormat(tokenizer).end_of_turn_ids()}
    eos = getattr(config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return sorted(i for i in ids if i is not None)


def context_length(config, default: int = 2048) -> int:
    for name in ("max_position_embeddings", "seq_length", "max_sequence_length", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


# Adapter wrappers whose forward changes attention or hidden states (prefix tuning, ReFT): run without a KV cache.
RECOMPUTE_WRAPPERS = ("PrefixModelForCausalLM", "LlmxReFTModel")


def can_run(model, family: str) -> bool:
    """Whether the engine runs this model: a PaddleNLP causal LM of a family it supports, bare or inside
    an adapter wrapper: one that keeps its forward (KV cache), or prefix tuning and ReFT, whose forward makes
    its own past_key_values or edits hidden states at prompt positions (no cache: RecomputeRunner)."""
    from paddlenlp.transformers import PretrainedModel

    from llmx.infer.support import engine_problem

    if type(model).__name__ in RECOMPUTE_WRAPPERS:
        return engine_problem(family) is None and not families.family(family).no_padded_batch
    return engine_problem(family) is None and (isinstance(model, PretrainedModel)
                                               or type(model).__name__ in SAME_FORWARD_WRAPPERS)


def family_record(model) -> Optional[Family]:
    """The record of the family whose PaddleNLP class `model` is, bare or inside an adapter wrapper (a class two
    families build reads as its owner's), or None."""
    from paddlenlp.transformers import PretrainedModel

    inner = model
    while not isinstance(inner, PretrainedModel) and getattr(inner, "model", None) is not None:
        inner = inner.model
    name = type(inner).__name__
    return next((f for f in FAMILIES.values() if f.architecture == name and f.owns_architecture), None)


def dynamic_engine(model, tokenizer, max_batch: int = 8, max_tokens_in_cache: int = 65536, seed: int = 0,
                   static_batching: bool = False) -> Engine:
    model.eval()
    config = model.config
    if type(model).__name__ in RECOMPUTE_WRAPPERS:
        runner = RecomputeRunner(model, tokenizer.pad_token_id)
    else:
        record = family_record(model)  # (a class no family builds: PaddleNLP's usual past_key_values)
        runner = RUNNERS[record.engine_cache if record else "past_key_values"](model, tokenizer.pad_token_id)
    return Engine(runner, tokenizer, max_batch, max_tokens_in_cache, context_length(config), seed,
                  eos_ids(config, tokenizer), static_batching)


def static_engine(program_dir, tokenizer, config, device: str = "cpu", max_batch: int = 8,
                  max_tokens_in_cache: int = 65536, seed: int = 0) -> Engine:
    from llmx.infer.export import load_predictor

    runner = StaticRunner(load_predictor(program_dir, device), tokenizer.pad_token_id)
    return Engine(runner, tokenizer, max_batch, max_tokens_in_cache, context_length(config), seed,
                  eos_ids(config, tokenizer))
