"""Zero padding (sequence packing): the greedy packer, the packed collator's masks and the config guard.
Model exactness and an end-to-end packed run: tests/runs/test_packing.py."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import compose, input_error

from llmx.errors import DataError
from llmx.schema import asset_path
from llmx.data.packing import pack_examples, packing_stats, segment_bounds
from llmx.data.formats import read_sft
from llmx.data.sft import SftEncoder
from llmx.stages import validate
from llmx.tokens import IGNORE_INDEX


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
    examples = [enc.encode(c) for c in read_sft(asset_path("demo/sft_train.jsonl"))[:400]]
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


@pytest.mark.parametrize("family", ["opt", "yuan"])
def test_zero_padding_refused_for_families_without_4d_masks(family, tmp_path):
    line = input_error(f"model={family}", "stage.zero_padding=true")
    assert line.startswith("llmx: config error: stage.zero_padding=True: "), line
    assert f"model family {family} cannot keep packed examples apart; supported: baichuan, baichuan2, bloom, " in line, line


def test_zero_padding_with_prefix_refused_where_positions_follow_the_prefix(tmp_path):
    line = input_error("model=mistral", "stage=prefix", "stage.zero_padding=true")
    assert "stage.zero_padding=True: not with prefix tuning for model family mistral" in line, line


def test_zero_padding_with_prefix_refused_for_alibi():
    line = input_error("model=baichuan2", "model.size=13b", "stage=prefix", "stage.zero_padding=true")
    assert "stage.zero_padding=True: not with prefix tuning for model family baichuan2" in line, line


def test_zero_padding_config_validates_for_supported_families():
    """Packing validates exactly for the families whose models keep packed examples apart (4D masks,
    positions restarting per example: tests/runs/test_packing.py); with prefix tuning only where the prefix
    cache does not shift positions or biases. Elsewhere validation stops at stage.zero_padding (or earlier,
    where the family or its prefix tuning is not trainable at all), and nothing turns packing off silently."""
    from copy import deepcopy

    from llmx.errors import ConfigError
    from llmx.schema import CONF_DIR

    def validates(cfg) -> bool:
        try:
            validate(cfg)
        except ConfigError as e:
            assert str(e).startswith(("stage.zero_padding=True: ", "model.family=", "stage.peft.method=")), e
            return False
        assert cfg.stage.zero_padding is True
        return True

    accepted = {"lora": [], "prefix": []}
    for name in sorted(p.stem for p in CONF_DIR.glob("model/*.yaml")):
        # composing is the slow part: once per family, the lora case a copy with the method switched
        cfg = compose(f"model={name}", "stage=prefix", "stage.zero_padding=true")
        as_lora = deepcopy(cfg)
        as_lora.stage.peft.method = "lora"
        for method, c in (("lora", as_lora), ("prefix", cfg)):
            if validates(c):
                accepted[method].append(name)
    # not chatglm (v1: not trainable), opt, yuan (no 4D masks)
    assert accepted["lora"] == ["baichuan", "baichuan2", "bloom", "chatglm2", "gemma", "gemma2", "gemma3", "gpt3",
                                "llama", "mistral", "mixtral", "qwen", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "tiny"]
    # nor bloom (ALiBi), gpt3 (learned positions), mistral (rotary): positions or biases follow the prefix;
    # nor gemma2/3 (the sliding window counts the prefix's columns)
    assert accepted["prefix"] == ["baichuan", "baichuan2", "chatglm2", "gemma", "llama", "mixtral", "qwen", "qwen2",
                                  "qwen2_moe", "qwen3", "qwen3_moe", "tiny"]
