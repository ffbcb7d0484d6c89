"""Which models the engine runs (paddle-free, for validation): a family's record says why not where it
does not (llmx.families, `Family.no_engine`, and for static mode `no_static`, `no_padded_batch`); adapters
that act on attention or hidden states run without a KV cache, over a padded batch."""
from __future__ import annotations

from typing import Optional

from llmx import families


def engine_problem(family: str) -> Optional[str]:
    return families.family(family).no_engine or None


def static_problem(family: str) -> Optional[str]:
    """Why static mode cannot run this family: its export fails, or its padded rows compute otherwise than alone
    (the exported program runs the whole padded batch, without a cache)."""
    record = families.family(family)
    return record.no_static or record.no_padded_batch or None


def check_model(cfg) -> None:
    """stage=infer and stage=serve: refuse, in one line, a family the engine does not run, one static mode cannot
    run, and an adapter it cannot run on this family or layout."""
    from llmx.schema import require

    m, mode = cfg.model, cfg.stage.mode
    problem = engine_problem(m.family)
    require(problem is None, "model.family", m.family, f"llmx's inference engine does not run it: {problem}")
    problem = static_problem(m.family) if mode == "static" else None
    require(problem is None, "stage.mode", mode, f"model.family={m.family} does not run as a static program: {problem}")
    problem = kept_adapter_problem(cfg)
    require(problem is None, "model.name_or_path", m.name_or_path, problem or "")


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
    padded = families.family(cfg.model.family).no_padded_batch
    if padded:
        return ("holds an adapter that acts on attention or hidden states (prefix, ReFT), run without a KV cache over "
                f"a padded batch: {padded}")
    return None
