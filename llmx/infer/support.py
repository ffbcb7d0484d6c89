"""Which families the engine runs (paddle-free, for validation). Checked on these machines: at their
tiny sizes, every family below not listed gives, through the engine in batches, the greedy tokens of
PaddleNLP's `generate` one prompt at a time."""
from __future__ import annotations

from typing import Optional

NO_ENGINE = {
    "bloom": "PaddleNLP's Bloom takes its cache as `cache=` and positions from ALiBi over the mask, not position_ids",
    "opt": "PaddleNLP's OPT derives positions from the attention mask itself and ignores position_ids: "
           "a left-padded row would not compute what it computes alone",
    "yuan": "PaddleNLP's Yuan keeps extra recurrent state beside its KV cache",
    "chatglm": "ChatGLM v1 is not supported by llmx (use chatglm2)",
}


def engine_problem(family: str) -> Optional[str]:
    return NO_ENGINE.get(family)


def kept_adapter(m) -> bool:
    """Whether `model.name_or_path` holds an adapter that cannot fold into its base (prefix tuning, ReFT): the
    engine then runs the base with the adapter on it, without a KV cache (llmx.infer.runners.RecomputeRunner)."""
    if not m.name_or_path:
        return False
    from llmx.sources import resolve

    source = resolve(m.name_or_path)
    return source.adapter is not None and not source.mergeable


def kept_adapter_problem(cfg) -> Optional[str]:
    if not kept_adapter(cfg.model):
        return None
    if cfg.stage.mode != "dynamic":
        return "holds an adapter that acts on attention or hidden states (prefix, ReFT); it runs in stage.mode=dynamic only"
    if cfg.parallel.tp > 1:
        return "holds an adapter that acts on attention or hidden states (prefix, ReFT); it runs in one process only"
    return None
