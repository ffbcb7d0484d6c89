"""What the stages training on preference data share (dpo, kto: validate_preference; rm: validate_pairs)."""
from __future__ import annotations

from omegaconf import DictConfig

from llmx.families import family
from llmx.schema.checks import positive, require
from llmx.schema.train import validate_training


def validate_preference(cfg: DictConfig) -> None:
    """What the preference stages (dpo, kto) share: validate_pairs, beta and merge_adapter."""
    s = cfg.stage
    validate_pairs(cfg)
    problem = family(cfg.model.family).no_4d_mask
    require(not problem, "model.family", cfg.model.family,
            f"stage={s.runner} trains on trl's rows (several sequences in one row under a 4-D attention mask), "
            f"which this family cannot take: {problem}")
    require(not s.merge_adapter or s.peft.method == "lora", "stage.merge_adapter", True, "needs stage.peft.method=lora")
    require(s.beta > 0, "stage.beta", s.beta, "must be > 0")


def validate_pairs(cfg: DictConfig) -> None:
    """What the stages training on preference data (dpo, kto, rm) share: trainable model, data files and
    lengths, training loop, adapters (full or LoRA), eval batches, and the layouts they run under."""
    s, d, p = cfg.stage, cfg.stage.data, cfg.parallel
    validate_training(cfg, "kto" if s.runner == "kto" else "dpo")
    positive("stage.data.max_length", d.max_length, 4)
    require(1 <= d.max_prompt_length < d.max_length, "stage.data.max_prompt_length", d.max_prompt_length,
            f"must be between 1 and stage.data.max_length-1 ({d.max_length - 1})")
    # (pipeline layouts: dpo and kto run trl's schedule with llmx's criterion as the last stage's loss,
    # llmx.align.preference; rm puts its score head there, llmx.align.reward)
    require(p.pp == 1 or s.runner != "rm" or s.peft.method == "none", "stage.peft.method", s.peft.method,
            "stage=rm under pipeline parallelism trains full weights (the score head replaces the last stage's LM "
            "head inside the pipeline; an adapter wrapper would hide it); use stage.peft.method=none, or dp/sharding")
    require(not p.sequence_parallel, "parallel.sequence_parallel", True,
            "trl's packed preference batches are not cut along the sequence here")
    # (LoRA's reference is the base with its adapters switched off, the switch trl flips; other adapters
    # have none here)
    require(s.peft.method in ("none", "lora"), "stage.peft.method", s.peft.method,
            "preference stages train full weights (none) or LoRA adapters (lora)")
    positive("stage.eval.batch_size", s.eval.batch_size)
