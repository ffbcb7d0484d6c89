"""SFT runner for full fine-tuning, LoRA and Prefix tuning (cfg.stage.peft decides).

Train on {"src", "tgt"} JSONL with loss on answers only, evaluate the held-out
split before and after (loss + exact match of greedy generations), write
samples, and export: the full model, or the adapter plus a reference to its
base (and, for LoRA with merge_adapter, the merged model too).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from llmx.data.sft import Conversation, read_sft_jsonl
from llmx.stages import register


def prepare(cfg: DictConfig) -> dict:
    """Read and check the data files before any heavy import (paddle-free)."""
    d = cfg.stage.data
    return {"train": read_sft_jsonl(d.train), "eval": read_sft_jsonl(d.eval) if d.eval else []}


def _exact_match(ctx, model, tokenizer, encoder, convs: list[Conversation]) -> tuple[float, list[dict]]:
    from llmx.engine.generate import greedy_generate

    e = ctx.cfg.stage.eval
    convs = convs if e.num_samples == -1 else convs[: e.num_samples]
    prompts = [encoder.prompt_for_generation(c) for c in convs]
    generated = greedy_generate(model, tokenizer, prompts, e.max_new_tokens, e.batch_size)
    samples = []
    for conv, ids in zip(convs, generated):
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        samples.append({"prompt": conv.turns[-1][0], "target": conv.answer, "generated": text.strip(),
                        "correct": text.strip() == conv.answer.strip()})
    accuracy = sum(s["correct"] for s in samples) / max(len(samples), 1)
    return accuracy, samples


@register("sft")
def run(cfg: DictConfig, ctx) -> dict:
    from llmx.data.sft import SftEncoder
    from llmx.engine import model as models
    from llmx.engine.batching import PackedCollator, PadCollator, use_flashmask
    from llmx.engine.fit import fit

    exp, stage, method = ctx.experiment, cfg.stage, cfg.stage.peft.method
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)

    base_ref = cfg.model.name_or_path
    if method != "none" and base_ref is None:
        # An adapter must point at weights that exist: keep the random-init base once.
        base_ref = str(exp.dir / "base_model")
        if ctx.runtime.is_main and not Path(base_ref, "config.json").exists():
            models.save_pretrained(model, tokenizer, Path(base_ref), safe_serialization=True)
    model = models.wrap_peft(model, cfg, base_ref)

    encoder = SftEncoder(tokenizer, stage.data.max_length, stage.data.src_length)
    train_set = [encoder.encode(c) for c in ctx.inputs["train"]]
    eval_set = [encoder.encode(c) for c in ctx.inputs["eval"]]

    packing, collator = None, PadCollator(tokenizer.pad_token_id)
    if stage.zero_padding:  # train on packed sequences; eval stays one example per row, comparable with unpacked runs
        from llmx.data.packing import pack_examples, packing_stats

        train_set = pack_examples(train_set, stage.data.max_length)
        packing = packing_stats(train_set, stage.data.max_length)
        ctx.log.info("zero padding: %d examples in %d sequences of <= %d tokens, non-pad fraction %.4f",
                     packing["examples"], packing["sequences"], stage.data.max_length, packing["non_pad_fraction"])
        collator = PackedCollator(tokenizer.pad_token_id, flashmask=use_flashmask(model, ctx.runtime.device))
    trainer, summary = fit(cfg, ctx, model, tokenizer, train_set, eval_set, collator, evaluate=stage.eval.enabled)
    summary = {"stage": method if method != "none" else "sft", **summary}
    if packing:
        summary["packing_efficiency"] = round(packing["non_pad_fraction"], 4)
        summary["packed_sequences"] = packing["sequences"]
    if "eval_loss" in summary and cfg.parallel.pp == 1:  # a pipeline-parallel model cannot generate
        summary["exact_match"], samples = _exact_match(ctx, model, tokenizer, encoder, ctx.inputs["eval"])
        exp.write_samples(samples[: stage.eval.samples_to_log])
        exp.log_metrics({"step": trainer.state.global_step, "exact_match": summary["exact_match"]})

    if method == "none":
        summary["model_dir"] = models.export_full_model(cfg.parallel, trainer, model, tokenizer, exp.dir / "model",
                                                        ctx.runtime.is_main)
    elif ctx.runtime.is_main:
        summary.update(_export_adapter(cfg, exp, model, tokenizer, base_ref))
    return summary


def _export_adapter(cfg: DictConfig, exp, model, tokenizer, base_ref) -> dict:
    from llmx.engine.model import save_pretrained

    out = {"adapter_dir": str(save_pretrained(model, tokenizer, exp.dir / "adapter")), "base_model": base_ref}
    if cfg.stage.merge_adapter:
        model.merge()
        out["model_dir"] = str(save_pretrained(model.model, tokenizer, exp.dir / "model", safe_serialization=True))
    return out
