"""SFT runner for full fine-tuning and every adapter: LoRA (and its variants), prefix tuning, LoKr, VeRA,
ReFT (cfg.stage.peft decides).

Train on chat data in any format of llmx.data.formats with loss on the assistant turns only, evaluate the held-out
split before and after (loss + exact match of greedy generations), write
samples, and export: the full model, or the adapter plus a reference to its
base (and, with merge_adapter for the adapters that fold into weights, the merged model too).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from llmx.data.dialogue import Dialogue
from llmx.data.formats import read_splits
from llmx.schema import (DataFiles, MERGEABLE_METHODS, PeftConfig, TrainConfig, model_family, model_hparams, positive,
                         require, validate_training)
from llmx.families import FAMILIES


@dataclass
class DataConfig(DataFiles):
    train: Any = "${asset:demo/sft_train.jsonl}"
    eval: Optional[str] = "${asset:demo/sft_eval.jsonl}"
    max_length: int = 128  # tokens per example (prompt + answer)
    src_length: int = 96  # at most this many prompt tokens are kept (from the right)


@dataclass
class EvalConfig:
    enabled: bool = True
    max_new_tokens: int = 16
    num_samples: int = 64  # held-out examples generated for exact match; -1 = all
    batch_size: int = 16
    samples_to_log: int = 8  # generations written to samples.jsonl


@dataclass
class Config:
    runner: str = "sft"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    merge_adapter: bool = False  # LoRA (any variant), LoKr, VeRA: also write the merged full model
    zero_padding: bool = False  # pack several examples per training sequence (eval stays unpacked)


def validate(cfg: DictConfig) -> None:
    s, m = cfg.stage, cfg.model
    d, p, e = s.data, s.peft, s.eval
    fam = model_family(m)
    validate_training(cfg, "sft")
    positive("stage.data.max_length", d.max_length, 2)
    require(1 <= d.src_length < d.max_length, "stage.data.src_length", d.src_length,
            f"must be between 1 and stage.data.max_length-1 ({d.max_length - 1})")
    require(not s.merge_adapter or p.method in MERGEABLE_METHODS, "stage.merge_adapter", True,
            f"needs an adapter that folds into the weights ({', '.join(MERGEABLE_METHODS)}); "
            + {"none": "full fine-tuning already writes the full model",
               "prefix": "prefix tuning adds key/value tokens, not weights",
               "reft": "ReFT edits hidden states at chosen positions, not weights"}.get(p.method, ""))
    packing = sorted(n for n, f in FAMILIES.items() if f.packing)
    require(not s.zero_padding or fam.packing, "stage.zero_padding", True,
            f"model family {m.family} cannot keep packed examples apart; supported: {', '.join(packing)}")
    require(not (s.zero_padding and p.method == "reft"), "stage.zero_padding", True,
            "not with ReFT (its interventions act at each example's prompt positions, one example per row)")
    # (ALiBi's biases, Baichuan's 13B's, count key positions from the prefix cache on, as Bloom's do)
    prefix_shifts = not fam.packing_with_prefix or bool(s.zero_padding and model_hparams(m).get("alibi"))
    require(not (s.zero_padding and p.method == "prefix" and prefix_shifts), "stage.zero_padding", True,
            f"not with prefix tuning for model family {m.family} (positions or biases follow the prefix cache)")
    # PaddleNLP's sequence-parallel decoders reshape activations to [-1, seq_length, ...]: every
    # batch must be exactly seq_length tokens long, which padded SFT batches are not.
    require(not cfg.parallel.sequence_parallel, "parallel.sequence_parallel", True,
            "needs fixed-length batches of model seq_length tokens; the sft runner pads per batch")
    positive("stage.eval.max_new_tokens", e.max_new_tokens)
    positive("stage.eval.batch_size", e.batch_size)
    require(e.num_samples == -1 or e.num_samples >= 1, "stage.eval.num_samples", e.num_samples, "must be >= 1, or -1 for all")
    positive("stage.eval.samples_to_log", e.samples_to_log, 0)


def prepare(cfg: DictConfig) -> dict:
    """Read and check the data files before any heavy import (paddle-free)."""
    return read_splits(cfg.stage.data, "sft", cfg.seed)


def _exact_match(ctx, model, tokenizer, encoder, convs: list[Dialogue]) -> tuple[float, list[dict]]:
    from llmx.engine.generate import greedy_generate
    from llmx.infer.build import can_run, dynamic_engine
    from llmx.infer.sampling import SamplingParams

    e = ctx.cfg.stage.eval
    convs = convs if e.num_samples == -1 else convs[: e.num_samples]
    prompts = [encoder.prompt_for_generation(c) for c in convs]
    if can_run(model, ctx.cfg.model.family):  # llmx's engine: KV cache, continuous batching of e.batch_size rows
        was_training = model.training
        engine = dynamic_engine(model, tokenizer, max_batch=e.batch_size, seed=ctx.cfg.seed)
        generated = [r.tokens for r in engine.generate(prompts, SamplingParams(max_new_tokens=e.max_new_tokens))]
        if was_training:
            model.train()
    else:  # families and wrappers the engine does not run (llmx.infer.support): PaddleNLP's generate
        generated = greedy_generate(model, tokenizer, prompts, e.max_new_tokens, e.batch_size)
    samples = []
    for conv, ids in zip(convs, generated):
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        target = conv.last["content"]
        samples.append({"prompt": conv.last_user(), "target": target, "generated": text.strip(),
                        "correct": text.strip() == target.strip()})
    accuracy = sum(s["correct"] for s in samples) / max(len(samples), 1)
    return accuracy, samples


def run(cfg: DictConfig, ctx) -> dict:
    from llmx.data.encoders import sft_encoder
    from llmx.engine import model as models
    from llmx.engine.batching import PackedCollator, encoding_collator, use_flashmask
    from llmx.engine.checkpoint import adapter_base, export_model, export_result
    from llmx.engine.distributed import fixed_length_batches
    from llmx.engine.fit import fit
    from llmx.engine.peft import merged_model, wrap_peft

    exp, stage, method = ctx.experiment, cfg.stage, cfg.stage.peft.method
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)

    base_ref = adapter_base(cfg.model.name_or_path, model, tokenizer, ctx) if method != "none" else None
    model = wrap_peft(model, cfg, base_ref)

    encoder = sft_encoder(tokenizer, stage.data.max_length, stage.data.src_length)
    train_set = [encoder.encode(c) for c in ctx.inputs["train"]]
    eval_set = [encoder.encode(c) for c in ctx.inputs["eval"]]

    pad_to = stage.data.max_length if fixed_length_batches(ctx.layout) else None
    packing, collator = None, encoding_collator(tokenizer, pad_to=pad_to)
    if stage.zero_padding:  # train on packed sequences; eval stays one example per row, comparable with unpacked runs
        from llmx.data.packing import pack_examples, packing_stats

        train_set = pack_examples(train_set, stage.data.max_length)
        packing = packing_stats(train_set, stage.data.max_length)
        ctx.log.info("zero padding: %d examples in %d sequences of <= %d tokens, non-pad fraction %.4f",
                     packing["examples"], packing["sequences"], stage.data.max_length, packing["non_pad_fraction"])
        collator = PackedCollator(tokenizer.pad_token_id, pad_to=pad_to, flashmask=use_flashmask(model, ctx.runtime.device))
    if method == "reft":  # every batch names the prompt positions the interventions act on
        from llmx.engine.reft import ReftCollator

        collator = ReftCollator(collator, model)
    trainer, summary = fit(cfg, ctx, model, train_set, eval_set, collator, tokenizer, evaluate=stage.eval.enabled)
    summary = {"stage": method if method != "none" else "sft", **summary}
    if method != "none":
        summary["peft_method"] = method if stage.peft.variant == "none" else stage.peft.variant
        if stage.peft.lora_plus_ratio != 1.0:
            summary["lora_plus_ratio"] = stage.peft.lora_plus_ratio
    if packing:
        summary["packing_efficiency"] = round(packing["non_pad_fraction"], 4)
        summary["packed_sequences"] = packing["sequences"]
    if "eval_loss" in summary and cfg.parallel.pp == 1:  # a pipeline-parallel model cannot generate
        summary["exact_match"], samples = _exact_match(ctx, model, tokenizer, encoder, ctx.inputs["eval"])
        exp.write_samples(samples[: stage.eval.samples_to_log])
        exp.log_metrics({"step": trainer.state.global_step, "exact_match": summary["exact_match"]})

    summary.update(export_result(model, tokenizer, ctx, base_ref))
    if method == "none":
        return summary
    summary["adapter_bytes"] = sum(f.stat().st_size for f in Path(summary["adapter_dir"]).iterdir() if f.is_file())
    if stage.merge_adapter:  # every rank merges its shard of the adapters into its shard of the weights
        summary["model_dir"] = str(export_model(merged_model(model, ctx.layout.tp), tokenizer, exp.dir / "model",
                                                ctx.layout, ctx.runtime.is_main))
    return summary
