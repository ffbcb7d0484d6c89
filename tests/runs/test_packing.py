"""Zero padding on real models: a packed forward equals one-by-one forwards; an end-to-end packed SFT run
counts exactly the tokens of the packed rows it trained on."""
from __future__ import annotations

import pytest
from helpers import FAST, compose, launch, read_json, read_jsonl

from llmx.schema import asset_path
from llmx.data.packing import pack_examples, packing_stats, segment_bounds
from llmx.data.formats import read_sft
from llmx.data.sft import SftEncoder
from llmx.tokens import IGNORE_INDEX

# ------------------------------------------------------------------ exactness on real models


def _build(family: str):
    import paddle

    from llmx.engine.model import build_model, build_tokenizer

    paddle.set_device("cpu")
    cfg = compose(f"model={family}", "model.size=tiny")
    tok = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, seed=0)
    model.eval()
    return model, tok


def _logits(out):
    import paddle

    return out if isinstance(out, paddle.Tensor) else (out[0] if isinstance(out, tuple) else out.logits)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3", "qwen2_moe", "qwen3", "qwen3_moe"])  # gemma2/3: a 16-token window, 48-token examples
def test_packed_forward_equals_one_by_one(family):
    """Per-token logits and per-example losses of a packed batch equal each example's own forward:
    no attention crosses an example boundary, and positions restart at every example."""
    import paddle
    import paddle.nn.functional as F

    from llmx.engine.batching import NUM_TOKENS, PackedCollator

    model, tok = _build(family)
    enc = SftEncoder(tok, 64, 48)
    examples = [enc.encode(c) for c in read_sft(asset_path("demo/sft_train.jsonl"))[:24]]
    packs = pack_examples(examples, 96)
    assert len(packs) >= 3 and all(len(p["seq_lens"]) >= 3 for p in packs)
    assert len({len(p["input_ids"]) for p in packs}) > 1, "rows of one length would not test the padding tail"
    batch = PackedCollator(tok.pad_token_id)(packs)
    logit_diff = loss_diff = 0.0
    with paddle.no_grad():
        packed = _logits(model(**{k: v for k, v in batch.items() if k not in ("labels", NUM_TOKENS)}))
        for r, p in enumerate(packs):
            for (start, end), i in zip(segment_bounds(p["seq_lens"]), p["example_ids"]):
                ids = paddle.to_tensor([examples[i]["input_ids"]])
                labels = paddle.to_tensor([examples[i]["labels"]])
                out = model(input_ids=ids, labels=labels)
                own_loss, own_logits = out[0], out[1]
                piece = packed[r, start:end]
                per_token = F.cross_entropy(piece, labels[0].unsqueeze(-1), ignore_index=IGNORE_INDEX, reduction="none")
                piece_loss = per_token.sum() / int((labels[0] != IGNORE_INDEX).sum())  # mean over learned tokens
                logit_diff = max(logit_diff, float((piece - own_logits[0]).abs().max()))
                loss_diff = max(loss_diff, abs(float(piece_loss) - float(own_loss)))
    print(f"{family}: max |logit diff| {logit_diff:.3g}, max |loss diff| {loss_diff:.3g}")
    assert logit_diff < 1e-5 and loss_diff < 1e-5, (logit_diff, loss_diff)


# ------------------------------------------------------------------ end to end


def test_zero_padding_sft_run(tmp_path):
    run = tmp_path / "packed"
    launch(f"hydra.run.dir={run}", "stage.zero_padding=true", "stage.train.max_steps=20", "stage.train.logging_steps=5",
           "stage.eval.num_samples=8", *FAST)
    from paddlenlp.transformers import AutoTokenizer

    from llmx.engine.trainer import SeededBatchSampler

    enc = SftEncoder(AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer")), 128, 96)
    packs = pack_examples([enc.encode(c) for c in read_sft(asset_path("demo/sft_train.jsonl"))], 128)
    summary = read_json(run / "summary.json")
    assert summary["packing_efficiency"] == round(packing_stats(packs, 128)["non_pad_fraction"], 4) > 0.9, summary
    assert summary["packed_sequences"] == len(packs)
    assert summary["eval_loss"] < summary["eval_loss_before"], summary
    assert f"zero padding: 2000 examples in {len(packs)} sequences" in (run / "llmx.log").read_text()
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    # tokens counts the real tokens of the packed rows trained on in each interval of 5 steps (16 rows a step)
    sampler, batches = SeededBatchSampler(packs, batch_size=16, seed=42), []
    for epoch in (0, 1):  # ~280 packed rows: 20 steps go into the second epoch
        sampler.set_epoch(epoch)
        batches += list(sampler)
    per_step = [sum(len(packs[i]["input_ids"]) for i in batch) for batch in batches[:20]]
    assert [r["tokens"] for r in rows] == [sum(per_step[k:k + 5]) for k in range(0, 20, 5)]
    assert all(r["tokens_per_s"] > 0 for r in rows)
