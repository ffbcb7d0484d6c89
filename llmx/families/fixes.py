"""How families' upstream fixes are marked and applied, and the fix several families share.

A fix is a function of its family's module (llmx.families.<family>), listed in its record's
`fixes` and marked with the phase it runs in: `@before_build` (patches a PaddleNLP class before
a model is made) or `@after_random_init` (repairs a freshly initialised model). Its docstring
names the upstream problem, the version it was found in and when it can go. Paddle is imported
inside the fixes, so listing them is cheap.
"""
from __future__ import annotations

from typing import Callable, Iterable

BEFORE_BUILD = "before_build"
AFTER_RANDOM_INIT = "after_random_init"


def before_build(fix: Callable) -> Callable:
    fix.phase = BEFORE_BUILD
    return fix


def after_random_init(fix: Callable) -> Callable:
    fix.phase = AFTER_RANDOM_INIT
    return fix


def apply(fixes: Iterable[Callable], phase: str, model=None) -> None:
    """Run the fixes among `fixes` (a family's `Family.fixes`) that belong to `phase` (BEFORE_BUILD or
    AFTER_RANDOM_INIT)."""
    for fix in fixes:
        if fix.phase == phase:
            fix(model)


def mean_over_target_tokens(model_class) -> None:
    """Make `model_class(labels=...)`'s loss the mean over target (non-ignored) tokens. The class computes
    it with paddle's cross_entropy(reduction="mean"), which in paddle 3.3 divides by every position,
    ignored ones included: the loss then depends on prompt lengths and on how much padding a batch
    has, so the same examples cut into other batches train differently."""
    import functools

    import paddle.nn.functional as F

    forward = model_class.forward
    if getattr(forward, "llmx_fixed", False):
        return

    @functools.wraps(forward)  # callers read its parameters (PaddleNLP's prefix model looks for `cache`)
    def fixed(self, *args, labels=None, **kwargs):
        out = forward(self, *args, **kwargs)
        if labels is None:
            return out
        logits = out if not isinstance(out, (tuple, dict)) else (out[0] if isinstance(out, tuple) else out.logits)
        per_token = F.cross_entropy(logits.astype("float32").reshape([-1, logits.shape[-1]]), labels.reshape([-1, 1]),
                                    ignore_index=-100, reduction="none")
        targets = (labels.reshape([-1]) != -100).astype("float32").sum()
        loss = per_token.sum() / targets.clip(min=1.0)
        if isinstance(out, tuple):
            return (loss,) + out
        if isinstance(out, dict):  # a ModelOutput: item and attribute
            out["loss"] = loss
            return out
        return loss, out

    fixed.llmx_fixed = True
    model_class.forward = fixed
