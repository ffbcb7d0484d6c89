"""A causal LM's logits and what the stages measure on them (the preference and RL stages share these)."""
from __future__ import annotations

import paddle

from llmx.ops import vocab


def forward_logits(model, **inputs):
    """The logits of a forward pass, whichever output type the model (or its adapter wrapper) returns."""
    out = model(**inputs)
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def whole_vocab(logits):
    """Tensor-parallel logits hold this rank's slice of the vocabulary: gather the rest."""
    from llmx.engine.distributed import hybrid_group

    hcg = hybrid_group()
    if hcg is None or hcg.get_model_parallel_world_size() == 1:
        return logits
    parts = []
    paddle.distributed.all_gather(parts, logits, group=hcg.get_model_parallel_group())
    return paddle.concat(parts, axis=-1)


def token_kl(policy_logits, ref_logits, mask) -> tuple[float, int]:
    """Sum over the masked positions of KL(policy || reference) of the next-token distributions, and the
    number of those positions."""
    kl = vocab.kl(whole_vocab(policy_logits), whole_vocab(ref_logits))
    m = mask.astype(kl.dtype)
    return float((kl * m).sum()), int(m.sum())
