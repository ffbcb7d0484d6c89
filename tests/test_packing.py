"""Zero padding (sequence packing): the greedy packer, the packed collator's masks, exactness of a
packed forward against one-by-one forwards, an end-to-end packed SFT run and the config guard."""
from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import FAST, launch, read_json, read_jsonl
from helpers import config_error
from llmx.config import CONF_DIR, DataError, asset_path, validate
from llmx.data.packing import pack_examples, packing_stats, segment_bounds
from llmx.data.sft import IGNORE_INDEX, SftEncoder, read_sft_jsonl


def _synthetic(n: int, seed: int = 0, longest: int = 60) -> list[dict]:
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        length = int(rng.randint(1, longest + 1))
        ids = rng.randint(5, 500, size=length).tolist()
        prompt = int(rng.randint(0, length))
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:][1:] + [2]})
    return out


# ------------------------------------------------------------------ the packer (numpy only)


def test_packer_fits_keeps_every_example_once_and_is_deterministic():
    examples = _synthetic(300)
    packs = pack_examples(examples, 64)
    assert all(len(p["input_ids"]) <= 64 for p in packs)
    assert sorted(i for p in packs for i in p["example_ids"]) == list(range(300))
    assert pack_examples(examples, 64) == packs
    stats = packing_stats(packs, 64)
    assert stats["examples"] == 300 and stats["tokens"] == sum(len(e["input_ids"]) for e in examples)
    # first-fit decreasing on uniform lengths is near-optimal: at most one sequence over the lower bound
    assert stats["sequences"] <= -(-stats["tokens"] // 64) + 1, stats
    for p in packs:
        assert p["seq_lens"] == [len(examples[i]["input_ids"]) for i in p["example_ids"]]
        assert p["example_ids"] == sorted(p["example_ids"])  # dataset order inside a sequence
        for (start, end), i in zip(segment_bounds(p["seq_lens"]), p["example_ids"]):
            # each segment is its example verbatim: the last position predicts the example's own last
            # token, never the next example's first one; positions restart at 0
            assert p["input_ids"][start:end] == examples[i]["input_ids"]
            assert p["labels"][start:end] == examples[i]["labels"]
            assert p["position_ids"][start:end] == list(range(end - start))


def test_packer_boundary_labels_on_real_encodings():
    from paddlenlp.transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))
    enc = SftEncoder(tok, 128, 96)
    examples = [enc.encode(c) for c in read_sft_jsonl(asset_path("demo/sft_train.jsonl"))[:400]]
    packs = pack_examples(examples, 128)
    assert packing_stats(packs, 128)["non_pad_fraction"] > 0.9
    for p in packs:
        for start, end in segment_bounds(p["seq_lens"]):
            assert p["input_ids"][start] == tok.bos_token_id and p["position_ids"][start] == 0
            assert p["labels"][start] == IGNORE_INDEX  # bos predicts a prompt token: not learned
            assert p["labels"][end - 1] == tok.eos_token_id  # the last position learns its own eos
            assert p["input_ids"][end - 1] != tok.eos_token_id  # ... and eos itself is never an input


def test_packer_rejects_examples_longer_than_max_length():
    with pytest.raises(DataError, match="example 1: 9 tokens, longer than the packing length 8"):
        pack_examples([{"input_ids": [1] * 3, "labels": [1] * 3}, {"input_ids": [1] * 9, "labels": [1] * 9}], 8)


# ------------------------------------------------------------------ the collator's masks


def test_collator_masks_block_diagonal_and_flashmask_agree():
    from llmx.engine.batching import NUM_TOKENS, PackedCollator

    packs = pack_examples(_synthetic(40, seed=1, longest=20), 48)
    dense = PackedCollator(0).arrays(packs[:4])
    flash = PackedCollator(0, flashmask=True).arrays(packs[:4])
    mask, ends = dense["attention_mask"][:, 0], flash["attn_mask_startend_row_indices"][:, 0]
    assert mask.dtype == np.bool_ and ends.dtype == np.int32
    b, s = dense["input_ids"].shape
    assert s == max(len(p["input_ids"]) for p in packs[:4])  # padded to the batch's longest row
    rows, cols = np.arange(s)[:, None], np.arange(s)[None, :]
    for r in range(b):
        # FlashMask (causal): column j is visible to rows j .. ends[j]-1; the same set as the dense mask
        assert (mask[r] == ((cols <= rows) & (rows < ends[r][None, :]))).all()
        n = len(packs[r]["input_ids"])
        for start, end in segment_bounds(packs[r]["seq_lens"]):
            assert mask[r, start:end, start:end].sum() == (end - start) * (end - start + 1) // 2
            assert not mask[r, end:, start:end].any()  # nothing after an example sees it
        assert mask[r].any(axis=-1).all()  # no empty row, also in the padding tail
        assert (dense["labels"][r, n:] == IGNORE_INDEX).all()
    batch = PackedCollator(0, pad_to=48)(packs[:4])
    assert batch[NUM_TOKENS] == sum(len(p["input_ids"]) for p in packs[:4])  # real tokens only
    # unpacked examples (eval sets) are one segment each: an ordinary causal mask
    single = PackedCollator(0).arrays([{"input_ids": [5, 6, 7], "labels": [6, 7, 2]}])
    assert (single["attention_mask"][0, 0] == np.tri(3, dtype=bool)).all()
    assert single["position_ids"].tolist() == [[0, 1, 2]]


# ------------------------------------------------------------------ exactness on real models


def _build(family: str):
    import paddle

    from llmx.engine.model import build_model, build_tokenizer

    paddle.set_device("cpu")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={family}", "model.size=tiny"])
    tok = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, seed=0)
    model.eval()
    return model, tok


def _logits(out):
    import paddle

    return out if isinstance(out, paddle.Tensor) else (out[0] if isinstance(out, tuple) else out.logits)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_forward_equals_one_by_one(family):
    """Per-token logits and per-example losses of a packed batch equal each example's own forward:
    no attention crosses an example boundary, and positions restart at every example."""
    import paddle
    import paddle.nn.functional as F

    from llmx.engine.batching import NUM_TOKENS, PackedCollator

    model, tok = _build(family)
    enc = SftEncoder(tok, 64, 48)
    examples = [enc.encode(c) for c in read_sft_jsonl(asset_path("demo/sft_train.jsonl"))[:24]]
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


# ------------------------------------------------------------------ end to end, and the config guard


def test_zero_padding_sft_run(tmp_path):
    run = tmp_path / "packed"
    launch(f"hydra.run.dir={run}", "stage.zero_padding=true", "stage.train.max_steps=20", "stage.train.logging_steps=5",
           "stage.eval.num_samples=8", *FAST)
    summary = read_json(run / "summary.json")
    assert summary["packing_efficiency"] > 0.9, summary
    assert summary["eval_loss"] < summary["eval_loss_before"], summary
    assert "zero padding: 2000 examples in" in (run / "llmx.log").read_text()
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    # tokens/s counts real tokens of packed rows (16 per step, <= 128 tokens each, nearly all real). The
    # collator counts when the DataLoader's prefetch thread collates, so single intervals run ahead: check the sum.
    assert len(rows) == 4 and all(r["tokens_per_s"] > 0 for r in rows), rows
    assert sum(r["tokens"] for r in rows) > 0.8 * 20 * 16 * 128, rows


@pytest.mark.parametrize("family", ["opt", "yuan"])
def test_zero_padding_refused_for_families_without_4d_masks(family, tmp_path):
    line = config_error(f"model={family}", "stage.zero_padding=true", tmp_path=tmp_path)
    assert line.startswith("llmx: config error: stage.zero_padding=True: "), line
    assert f"model family {family} cannot keep packed examples apart; supported: llama, " in line, line


def test_zero_padding_with_prefix_refused_where_positions_follow_the_prefix(tmp_path):
    line = config_error("model=mistral", "stage=prefix", "stage.zero_padding=true", tmp_path=tmp_path)
    assert "stage.zero_padding=True: not with prefix tuning for model family mistral" in line, line


def test_zero_padding_config_validates_for_supported_families():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in (["model=qwen2", "stage=lora"], ["model=llama", "stage=prefix"]):
            validate(compose("config", overrides=[*overrides, "stage.zero_padding=true"]))
