"""ChatGLM v1's GLM encoding (llmx.data.glm) against the convention of ChatGLM-6B's published tokenizer and modelling
code (THUDM/chatglm-6b: build_inputs_with_special_tokens, get_position_ids, get_masks), written out again here."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import compose, dialogue

from llmx.data.encoders import sft_encoder
from llmx.tokens import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    from llmx.engine.model import build_tokenizer

    return build_tokenizer(compose("model=chatglm", "model.size=tiny").model)


def _reference(ids, bos, gmask):
    """THUDM's chatglm-6b: context = up to <sop>; positions freeze at the [gMASK] index from <sop> on, block
    positions count 1, 2, ... from <sop>; the mask hides j from i only when j is past the context and after i."""
    n, context = len(ids), ids.index(bos)
    positions = [i if i < context else ids.index(gmask) for i in range(n)]
    blocks = [0] * context + list(range(1, n - context + 1))
    allowed = [[j < context or j <= i for j in range(n)] for i in range(n)]
    return np.array([positions, blocks]), np.array(allowed)


def test_tiny_tokenizer_gets_the_glm_tokens(tok):
    """[MASK] and [gMASK] are added as ids 512 and 513 (the tiny size's mask/gmask ids); bos and eos play <sop>
    and <eop>; the tokens encode as themselves in text, as ChatGLM's tokenizer does."""
    size = compose("model=chatglm", "model.size=tiny").model.sizes.tiny
    assert tok.convert_tokens_to_ids(["[MASK]", "[gMASK]"]) == [size.mask_token_id, size.gmask_token_id] == [512, 513]
    assert (tok.bos_token_id, tok.eos_token_id) == (size.bos_token_id, size.eos_token_id)
    assert len(tok) <= size.vocab_size and tok.llmx_encoding == "glm"
    assert 513 in tok("say [gMASK]", add_special_tokens=False)["input_ids"]


def test_example_ids_labels_positions_and_mask(tok):
    enc = sft_encoder(tok, 64, 48)

    def text(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    bos, eos, gmask = tok.bos_token_id, tok.eos_token_id, 513
    whole = text("copy: red fox") + [gmask, bos] + text("red fox") + [eos]  # build_inputs_with_special_tokens
    context = whole.index(bos)
    example = enc.encode(dialogue(("copy: red fox", "red fox")))
    # PaddleNLP's criterions do not shift: labels[i] is the token after input_ids[i]; only the answer is learned
    assert example["input_ids"] == whole[:-1]
    assert example["labels"] == [IGNORE_INDEX] * context + whole[context + 1:]
    positions, allowed = _reference(example["input_ids"], bos, gmask)
    batch = enc.layout.batch([example, enc.encode(dialogue(("copy: a", "a")))])
    n = len(example["input_ids"])
    np.testing.assert_array_equal(batch["position_ids"][0], positions)
    np.testing.assert_array_equal(batch["attention_mask"][0, 0], allowed)
    short = enc.encode(dialogue(("copy: a", "a")))["input_ids"]
    m = len(short)  # right-padded: pads neither attend nor are attended to, position 0
    assert batch["attention_mask"].shape == (2, 1, n, n) and not batch["attention_mask"][1, 0, m:].any()
    assert not batch["attention_mask"][1, 0, :, m:].any() and not batch["position_ids"][1, :, m:].any()
    np.testing.assert_array_equal(batch["position_ids"][1, :, :m], _reference(short, bos, gmask)[0])


def test_generation_prompts_and_history(tok):
    """The prompt ends with [gMASK] <sop>; history goes into ChatGLM-6B's rounds, its answers unlearned; a left-padded
    batch keeps each row's own positions and mask."""
    enc = sft_encoder(tok, 128, 96)

    def text(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    bos, gmask = tok.bos_token_id, 513
    two = dialogue(("copy: x", "x"), ("upper it", "X"))
    rounds = "[Round 0]\n问：copy: x\n答：x\n[Round 1]\n问：upper it\n答："
    assert enc.prompt_for_generation(two) == text(rounds) + [gmask, bos]
    assert enc.encode(two)["labels"].count(IGNORE_INDEX) == len(text(rounds)) + 1
    prompts = [enc.prompt_for_generation(dialogue(("copy: red fox", "red fox"))), text("hi") + [gmask, bos]]
    batch = enc.layout.batch([{"input_ids": p} for p in prompts], left=True)
    s, short = batch["input_ids"].shape[1], len(prompts[1])
    np.testing.assert_array_equal(batch["position_ids"][1, :, s - short:], _reference(prompts[1], bos, gmask)[0])
    np.testing.assert_array_equal(batch["attention_mask"][1, 0, s - short:, s - short:],
                                  _reference(prompts[1], bos, gmask)[1])
    assert not batch["attention_mask"][1, 0, :, : s - short].any()


def test_other_training_stages_are_refused():
    from llmx.errors import ConfigError
    from llmx.stages import validate

    with pytest.raises(ConfigError, match="trains with stage=sft .and its adapters. only"):
        validate(compose("model=chatglm", "model.size=tiny", "stage=dpo"))
    validate(compose("model=chatglm", "model.size=tiny", "stage=lora"))
