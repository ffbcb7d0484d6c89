"""Adapters over a frozen base (`stage.peft`), for every stage that fine-tunes: the methods, LoRA's variants,
which fold into the weights, and the layouts PaddleNLP runs each under."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import DictConfig

from llmx.schema.checks import one_of, positive, require
from llmx.schema.model import model_dim, model_family

PEFT_METHODS = ("none", "lora", "prefix", "lokr", "vera", "reft")
LORA_VARIANTS = ("none", "rslora", "pissa", "mora", "moslora")
MERGEABLE_METHODS = ("lora", "lokr", "vera")


@dataclass
class PeftConfig:
    """Adapters over a frozen base, for every stage that fine-tunes."""

    method: str = "none"  # none | lora | prefix | lokr | vera | reft
    target_modules: Optional[List[str]] = None  # lora/lokr/vera: None = the family's LoRA targets (llmx.families)
    # LoRA and its variants
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    variant: str = "none"  # none | rslora (alpha/sqrt(r)) | pissa (SVD init) | mora (square rank) | moslora (r x r mixer)
    lora_plus_ratio: float = 1.0  # LoRA+: the B matrices learn this many times faster than A
    # Prefix tuning
    num_prefix_tokens: int = 16
    # LoKr: W + kron(W1, W2) with W2 low-rank when lokr_dim is small
    lokr_dim: int = 8
    lokr_alpha: float = 0.0  # 0 = lokr_dim (scale 1)
    lokr_factor: int = -1  # split each dimension as m x n with m = factor (-1: m, n closest to square)
    lokr_decompose_both: bool = False  # W1 low-rank as well
    # VeRA: per-layer scaling vectors b (out) and d (r) over a frozen rank-r pair (SVD-initialised)
    vera_r: int = 8
    # ReFT (LoReFT): low-rank interventions on hidden states at chosen positions
    reft_layers: Optional[List[int]] = None  # None = every layer
    reft_rank: int = 4
    reft_positions: str = "f7+l7"  # first n / last n prompt tokens: f<n>, l<n> or f<n>+l<n>
    reft_dropout: float = 0.0


def validate_peft(cfg: DictConfig) -> None:
    p, m, par = cfg.stage.peft, cfg.model, cfg.parallel
    fam = model_family(m)
    one_of("stage.peft.method", p.method, PEFT_METHODS)
    if p.method in ("lora", "lokr", "vera"):
        targets = p.target_modules if p.target_modules is not None else fam.lora_targets
        require(len(targets) > 0, "stage.peft.target_modules", list(targets), "needs at least one module regex")
    if p.method == "lora":
        positive("stage.peft.lora_r", p.lora_r)
        positive("stage.peft.lora_alpha", p.lora_alpha)
        require(0 <= p.lora_dropout < 1, "stage.peft.lora_dropout", p.lora_dropout, "must be in [0, 1)")
        one_of("stage.peft.variant", p.variant, LORA_VARIANTS)
        require(p.lora_plus_ratio > 0, "stage.peft.lora_plus_ratio", p.lora_plus_ratio, "must be > 0 (1 = plain LoRA)")
        # PaddleNLP 3.0.0b4's LoRAModel raises NotImplementedError for MoRA and MoSLoRA on tensor- or pipeline-
        # parallel models. PiSSA under tp would take the SVD of each rank's shard, not of the whole matrix (another
        # model than one process's), and llmx rewrites a PiSSA adapter as plain LoRA only from whole layers.
        require((par.tp == 1 and par.pp == 1) or p.variant in ("none", "rslora"), "stage.peft.variant", p.variant,
                "does not run under tensor or pipeline parallelism (PaddleNLP: not implemented for mora/moslora; "
                "pissa's SVD would be per shard); use dp/sharding, or variant none/rslora")
        hidden = model_dim(m, "hidden_size")
        require(p.variant != "pissa" or hidden is None or p.lora_r <= hidden, "stage.peft.lora_r", p.lora_r,
                f"PiSSA takes the top lora_r singular vectors: must be <= the hidden size ({hidden})")
    else:
        require(p.variant == "none", "stage.peft.variant", p.variant, "is a LoRA variant: needs stage.peft.method=lora")
        require(p.lora_plus_ratio == 1.0, "stage.peft.lora_plus_ratio", p.lora_plus_ratio,
                "is LoRA+: needs stage.peft.method=lora")
    if p.method == "prefix":
        require(fam.prefix_cache is not None, "stage.peft.method", "prefix",
                f"prefix tuning is not supported for model family {m.family}: {fam.no_prefix}")
        positive("stage.peft.num_prefix_tokens", p.num_prefix_tokens)
        require(par.pp == 1, "stage.peft.method", p.method,
                "prefix tuning does not run under pipeline parallelism (PaddleNLP: not implemented); use lora, or dp/tp")
        # PaddleNLP's prefix model cuts the prefix cache for tensor-parallel ranks by contiguous width (the
        # layers-x-k/v axis), not by attention heads, and each rank learns only its cut of a replicated prefix:
        # another model than one process's.
        require(par.tp == 1, "stage.peft.method", p.method,
                "prefix tuning does not split over tensor-parallel ranks in PaddleNLP 3.0.0b4 (its cut of the prefix "
                "cache is not per attention head); use lora, or dp/sharding")
    if p.method == "lokr":
        positive("stage.peft.lokr_dim", p.lokr_dim)
        require(p.lokr_alpha >= 0, "stage.peft.lokr_alpha", p.lokr_alpha, "must be >= 0 (0 = lokr_dim, scale 1)")
        require(p.lokr_factor == -1 or p.lokr_factor >= 1, "stage.peft.lokr_factor", p.lokr_factor,
                "must be >= 1, or -1 for the most square split")
    if p.method == "vera":
        positive("stage.peft.vera_r", p.vera_r)
        hidden = model_dim(m, "hidden_size")
        require(hidden is None or p.vera_r <= hidden, "stage.peft.vera_r", p.vera_r,
                f"VeRA's pair is the top vera_r singular vectors: must be <= the hidden size ({hidden})")
    if p.method == "reft":
        require(fam.architecture == "LlamaForCausalLM", "stage.peft.method", "reft",
                f"PaddleNLP's ReFT hooks LLaMA's decoder layers only; model family {m.family} is not LLaMA")
        positive("stage.peft.reft_rank", p.reft_rank)
        require(0 <= p.reft_dropout < 1, "stage.peft.reft_dropout", p.reft_dropout, "must be in [0, 1)")
        require(reft_positions(p.reft_positions) is not None, "stage.peft.reft_positions", p.reft_positions,
                "allowed: f<n> (first n prompt tokens), l<n> (last n) or f<n>+l<n>, n >= 1")
        layers = model_dim(m, "num_hidden_layers")
        for layer in p.reft_layers or []:
            require(layers is None or 0 <= layer < layers, "stage.peft.reft_layers", list(p.reft_layers),
                    f"the model's layers are 0..{(layers or 1) - 1}")
    if p.method in ("lokr", "vera", "reft"):
        # PaddleNLP 3.0.0b4's LoKrModel and VeRAModel raise NotImplementedError for tensor- and pipeline-parallel
        # models; its ReFT hooks the single model's decoder layers.
        require(par.tp == 1 and par.pp == 1, "stage.peft.method", p.method,
                f"{p.method} does not run under tensor or pipeline parallelism (PaddleNLP: not implemented); "
                "use dp/sharding, or lora")


def reft_positions(spec: str) -> Optional[tuple]:
    """'f7+l7' -> (7, 7); 'f3' -> (3, 0); 'l2' -> (0, 2); None when malformed."""
    import re

    match = re.fullmatch(r"f(\d+)\+l(\d+)|f(\d+)|l(\d+)", spec or "")
    if not match:
        return None
    both_first, both_last, first, last = (int(g) if g else 0 for g in match.groups())
    first, last = first or both_first, last or both_last
    return (first, last) if (first >= 1 or last >= 1) and (not match.group(1) or (first >= 1 and last >= 1)) else None
