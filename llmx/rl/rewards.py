"""Rule-based rewards, and loading a user's reward function (paddle-free).

A reward function scores a batch of responses:

    fn(prompts: list[str], responses: list[str], references: list[str | None]) -> list[float]

`references` are the data's `tgt` answers (None where a line has none). `stage.reward` names one:
a built-in (`exact_match`, `answer_similarity`) or `module:function`.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Sequence

from llmx.errors import ConfigError


def _clean(text: str) -> str:
    return " ".join(text.split())


def exact_match(prompts: Sequence[str], responses: Sequence[str], references: Sequence) -> list[float]:
    """1.0 where the response equals the reference answer (surrounding whitespace ignored), else 0.0."""
    return [float(ref is not None and _clean(resp) == _clean(ref)) for resp, ref in zip(responses, references)]


def answer_similarity(prompts: Sequence[str], responses: Sequence[str], references: Sequence) -> list[float]:
    """1.0 for an exact match, else the character-level similarity ratio (difflib) in [0, 1) scaled by 0.5:
    a denser signal than exact match for weak models; an exact match is still worth the most."""
    out = []
    for resp, ref in zip(responses, references):
        if ref is None:
            out.append(0.0)
        elif _clean(resp) == _clean(ref):
            out.append(1.0)
        else:
            out.append(0.5 * difflib.SequenceMatcher(None, _clean(resp), _clean(ref)).ratio())
    return out


BUILTIN = {"exact_match": exact_match, "answer_similarity": answer_similarity}


def load_reward_fn(name: str, key: str = "stage.reward") -> Callable:
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}={name!r}: a built-in ({', '.join(BUILTIN)}), 'model' (stage.reward_model) "
                          "or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix; say which
        raise ConfigError(f"{key}={name!r}: cannot import {module_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}={name!r}: {module_name} has no function {attr}")
    return fn


def checked_rewards(fn: Callable, name: str, prompts, responses, references) -> list[float]:
    """Call `fn` and check what it returned: one finite number per response."""
    import math

    out = fn(list(prompts), list(responses), list(references))
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise ConfigError(f"stage.reward={name!r} returned {type(out).__name__}; it must return a list of "
                          f"{len(responses)} numbers (one per response)") from None
    if len(values) != len(responses):
        raise ConfigError(f"stage.reward={name!r} returned {len(values)} rewards for {len(responses)} responses "
                          "(it must return one per response)")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"stage.reward={name!r} returned a non-finite reward ({bad[0]})")
    return values
