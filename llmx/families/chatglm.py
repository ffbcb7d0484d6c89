"""ChatGLM v1 (PaddleNLP's ChatGLMForCausalLM). Its inputs are the GLM encoding (llmx.data.glm: [gMASK] and <sop>
after the prompt, 2-D position ids, a 4-D mask bidirectional over the prompt), which needs the tokens of
GLM_TOKENS: the bundled tiny tokenizer gets them added when it is built for this family."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from llmx.errors import DataError
from llmx.families.fixes import before_build, mean_over_target_tokens
from llmx.families.record import Family, Params
from llmx.tokens import pad_batch

# The mask tokens of ChatGLMTokenizer (THUDM/chatglm-6b), by tokenizer attribute; its <sop> and <eop> are the
# tokenizer's bos and eos. Added in this order to a tokenizer without them, so the bundled tiny one (whose bos <s>
# and eos </s> play <sop> and <eop>) has them as ids 512 and 513 (conf/model/chatglm.yaml's tiny size says so).
GLM_TOKENS = {"mask_token": "[MASK]", "gmask_token": "[gMASK]"}
LORA = (".*query_key_value.*", ".*dense.*", ".*dense_h_to_4h.*", ".*dense_4h_to_h.*")  # ChatGLM v1 and v2


class GlmLayout:
    """The GLM encoding's inputs (llmx.data.glm says the convention): the ids it reads off a tokenizer, and the
    positions and mask of a sequence of ids, found from its <sop> and [gMASK] as ChatGLM-6B's code finds them."""

    def __init__(self, tokenizer) -> None:
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.gmask = tokenizer.convert_tokens_to_ids(GLM_TOKENS["gmask_token"])
        if self.gmask in (None, tokenizer.unk_token_id):
            raise DataError(f"the tokenizer has no {GLM_TOKENS['gmask_token']} token (ChatGLM v1's encoding)")

    def context_length(self, ids: Sequence[int]) -> int:
        return list(ids).index(self.bos) if self.bos in ids else len(ids)

    def positions(self, ids: Sequence[int]) -> np.ndarray:
        """int64 [2, n]: positions (frozen at the [gMASK] index from <sop> on) and block positions."""
        n, c = len(ids), self.context_length(ids)
        pos = np.arange(n, dtype="int64")
        if self.gmask in ids:
            pos[c:] = list(ids).index(self.gmask)
        block = np.concatenate([np.zeros(c, dtype="int64"), np.arange(1, n - c + 1, dtype="int64")])
        return np.stack([pos, block])

    def mask(self, ids: Sequence[int]) -> np.ndarray:
        """bool [n, n], True = may attend: every row sees the whole prompt, the answer causally."""
        m = np.tri(len(ids), dtype=bool)
        m[:, :self.context_length(ids)] = True
        return m

    def batch(self, features: Sequence[dict], left: bool = False, width: Optional[int] = None) -> dict:
        """numpy input_ids (labels), position_ids [b, 2, s] and attention_mask [b, 1, s, s]; pads get position 0
        and neither attend nor are attended to."""
        out = pad_batch(features, self.pad, left=left, width=width)
        b, s = out["input_ids"].shape
        out["position_ids"] = np.zeros((b, 2, s), dtype="int64")
        out["attention_mask"] = np.zeros((b, 1, s, s), dtype=bool)
        for r, f in enumerate(features):
            ids, n = list(f["input_ids"]), len(f["input_ids"])
            span = slice(s - n, s) if left else slice(0, n)
            out["position_ids"][r, :, span] = self.positions(ids)
            out["attention_mask"][r, 0, span, span] = self.mask(ids)
        return out


def count_params(hp: Dict[str, Any]) -> Params:
    """ChatGLM v1: LayerNorms with bias, every Linear with bias, GeLU MLP of inner_hidden_size; the lm_head
    is the word embedding (tied)."""
    h, V, ff = hp["hidden_size"], hp["vocab_size"], hp["inner_hidden_size"]
    layer = 2 * 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * ff + ff) + (ff * h + h)
    return Params(layer, hp["num_hidden_layers"], embed=V * h, head=2 * h + V * h, shared=V * h)


def hf_name_map(config) -> list:
    """THUDM/chatglm-6b's tensor names (its modeling_chatglm.py) beside PaddleNLP's, whose ChatGLMForCausalLM has no
    _get_name_mappings (paddlenlp 3.0.0b4). Both fuse q/k/v alike (per head: q, k, v), so a Linear weight only
    transposes. The head is the embedding on both sides (THUDM's lm_head is tied by transformers'
    tie_word_embeddings default; PaddleNLP's shares the tensor): no name of its own."""
    linears = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    norms = ("input_layernorm", "post_attention_layernorm")
    names = [("transformer.word_embeddings.weight", False)]
    for i in range(config.num_hidden_layers):
        layer = f"transformer.layers.{i}."
        names += [(layer + f"{n}.{p}", False) for n in norms for p in ("weight", "bias")]
        names += [(layer + f"{n}.weight", True) for n in linears] + [(layer + f"{n}.bias", False) for n in linears]
    names += [("transformer.final_layernorm.weight", False), ("transformer.final_layernorm.bias", False)]
    return [(hf, "chatglm." + hf, transpose) for hf, transpose in names]


@before_build
def chatglm_loss_over_target_tokens(model=None) -> None:
    """ChatGLMForCausalLM's loss: see llmx.families.fixes.mean_over_target_tokens (paddlenlp 3.0.0b4 on paddle
    3.3.1). Its vocab-parallel branch (tensor parallelism, split logits) drops the ignored positions before its
    ParallelCrossEntropy and is right as it is: kept. Can go when its criterion divides by the target tokens."""
    import functools

    from paddlenlp.transformers import ChatGLMForCausalLM

    if getattr(ChatGLMForCausalLM.forward, "llmx_fixed", False):
        return
    upstream = ChatGLMForCausalLM.forward
    mean_over_target_tokens(ChatGLMForCausalLM)
    fixed = ChatGLMForCausalLM.forward

    @functools.wraps(upstream)
    def forward(self, *args, **kwargs):
        split = self.config.tensor_parallel_degree > 1 and self.config.tensor_parallel_output
        return (upstream if split else fixed)(self, *args, **kwargs)

    forward.llmx_fixed = True
    ChatGLMForCausalLM.forward = forward


FAMILY = Family(
    "chatglm", "ChatGLMForCausalLM", "ChatGLMConfig", LORA, kv_heads=None, encoding="glm", special_tokens=GLM_TOKENS,
    fixes=(chatglm_loss_over_target_tokens,),
    no_prefix="ChatGLM v1: llmx does not widen its 4-D [gMASK] mask over a prefix cache",
    no_engine="ChatGLM v1's 2-D positions and 4-D [gMASK] mask are not in llmx's engine (its runners keep 1-D "
              "positions); stage=sft's evaluation generates with PaddleNLP's generate",
    defaults=dict(vocab_size=130528, hidden_size=4096, num_hidden_layers=28, num_attention_heads=32,
                  inner_hidden_size=16384),
    aliases={"num_layers": "num_hidden_layers"}, count_params=count_params,
    hf_model_type="chatglm", hf_architecture="ChatGLMForConditionalGeneration", hf_marker="inner_hidden_size",
    hf_config_keys={"num_hidden_layers": "num_layers"}, hf_name_map=hf_name_map, paddle_marker="inner_hidden_size")
