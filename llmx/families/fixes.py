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


def mix_experts(x, experts, top_experts, top_weights):
    """The mixture-of-experts output of tokens `x` [tokens, hidden]: each token's chosen experts
    (`top_experts` [tokens, k]) weighted by `top_weights` [tokens, k], computed per expert on the tokens that
    chose it (no capacity, no dropped tokens). PaddleNLP's dispatchers fail on paddle 3.x's CPU builds
    (Mixtral's 1-D `paddle.where`, MoELayer's int32/int64 priorities): the families' routing fixes share this."""
    import paddle

    out = paddle.zeros_like(x)
    for e, expert in enumerate(experts):
        hit = top_experts == e  # [tokens, k]
        rows = paddle.nonzero(hit.any(axis=-1)).flatten()
        if rows.shape[0] == 0:
            continue
        weight = (top_weights * hit.astype(top_weights.dtype)).sum(axis=-1)  # this expert's weight per token
        y = expert(paddle.gather(x, rows)) * paddle.gather(weight, rows).unsqueeze(-1).astype(x.dtype)
        out = out.index_add(rows, 0, y.astype(x.dtype))
    return out
