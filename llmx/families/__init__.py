"""What llmx knows about each model family, in one place (paddle-free).

A `conf/model/<family>.yaml` file holds what a user chooses (size, weights, dtype,
overrides); this table holds what is true of the family whatever the user chooses:
its PaddleNLP classes, the spellings of its hyperparameters, which adapters and
packing it supports, and the upstream problems llmx works around for it. Validation,
`plan`, model building and the tests all read it; nothing else restates it.

The fixes themselves live in `llmx.families.fixes` (they need paddle, imported there
only when a fix is applied).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from llmx.errors import ConfigError

_HPARAMS_FILE = Path(__file__).with_name("hparams.json")


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # class in paddlenlp.transformers
    config_class: str  # class in paddlenlp.transformers
    lora_targets: Tuple[str, ...]  # module-name regexes LoRA wraps by default
    pipeline_class: Optional[str] = None  # PaddleNLP's pipeline-parallel class, if it has one
    # Prefix tuning: how this family's attention takes a past key/value cache (a layout name in
    # llmx.engine.prefix_hooks), or None with the reason in `no_prefix`.
    prefix_cache: Optional[str] = None
    prefix_mask: Optional[str] = None  # how to widen the attention mask over the prefix (None: prepend ones)
    no_prefix: str = ""
    # Zero padding (packing): the attention takes a block-diagonal [b, 1, s, s] mask with per-example
    # position ids, so a packed forward equals separate ones (tests/test_packing.py).
    packing: bool = False
    packing_with_prefix: bool = False  # and still so behind a prefix cache
    not_trainable: str = ""  # why llmx cannot train it yet ("" = it can)
    no_tensor_parallel: str = ""  # why it cannot be split over tensor-parallel ranks ("" = it can)
    # Canonical names of the hyperparameters layouts depend on (after `aliases`).
    heads: str = "num_attention_heads"
    kv_heads: Optional[str] = "num_key_value_heads"  # None: one KV head per query head
    layers: str = "num_hidden_layers"
    vocab: str = "vocab_size"
    # Config class defaults of the keys llmx's formulas read (tests compare them with PaddleNLP).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)  # another accepted spelling -> the name used here
    fixes: Tuple[str, ...] = ()  # names of functions in llmx.families.fixes, applied when the family is built
    # Hugging Face checkpoints (llmx.convert): config.json's model_type and the transformers class (or the
    # checkpoint's own remote-code class), a config key that tells this family from others sharing its
    # model_type, config keys spelled otherwise (PaddleNLP key -> HF key), HF keys PaddleNLP's config lacks,
    # and (PaddleNLP head, HF head, HF embedding) where HF ties a head that PaddleNLP keeps as its own tensor.
    hf_model_type: Optional[str] = None
    hf_architecture: Optional[str] = None
    hf_marker: Optional[str] = None
    hf_config_keys: Mapping[str, str] = field(default_factory=dict)
    hf_config_extra: Mapping[str, Any] = field(default_factory=dict)
    hf_tied_head: Optional[Tuple[str, str, str]] = None
    hf_map_prefix: Optional[Tuple[str, str]] = None
    hf_fused_qkv: Optional[str] = None  # HF's name of one fused q/k/v weight that PaddleNLP's class keeps as three  # (PaddleNLP, HF) prefixes PaddleNLP's name map leaves off
    sp_tokenizer: Optional[str] = None  # PaddleNLP class that reads the family's SentencePiece tokenizer.model

    # -------------------------------------------------------------- hyperparameters
    def hyperparameters(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        """`given` (a size, a config.json, overrides) over the family defaults, spellings unified."""
        hp = dict(self.defaults)
        hp.update({self.aliases[k]: v for k, v in given.items() if k in self.aliases and self.aliases[k] not in given})
        hp.update({k: v for k, v in given.items() if k not in self.aliases})
        if self.kv_heads and hp.get(self.kv_heads, 0) is None:  # LlamaConfig/YuanConfig: None = one per head
            hp[self.kv_heads] = hp[self.heads]
        return hp

    def dims(self, given: Mapping[str, Any]) -> Dict[str, Optional[int]]:
        """heads, kv_heads, layers, vocab: what a parallel layout must divide."""
        hp = self.hyperparameters(given)
        heads = hp.get(self.heads)
        kv = hp.get(self.kv_heads) if self.kv_heads else None
        return {"heads": heads, "kv_heads": kv if kv is not None else heads,
                "layers": hp.get(self.layers), "vocab": hp.get(self.vocab)}

    def known_hyperparameters(self) -> set:
        """Every name the config class accepts or the model reads (hparams.json, generated from PaddleNLP)."""
        return set(_known_names()[self.name]) | set(self.aliases)

    def check_hyperparameter_names(self, names, where: str) -> None:
        known = self.known_hyperparameters()
        for name in names:
            if name not in known:
                close = close_matches(name, known)
                hint = f"did you mean {', '.join(close)}?" if close else "not a hyperparameter of " + self.config_class
                raise ConfigError(f"{where}.{name}: unknown hyperparameter for model family {self.name} ({hint})")


def close_matches(name: str, known, n: int = 3) -> list:
    """Known names like `name`: by spelling, and names holding all of its words (num_head ->
    num_attention_heads) ahead of mere look-alikes (num_beams)."""
    words = [w for w in name.lower().split("_") if w]

    def score(k: str) -> float:
        holds_words = all(w in k.lower() for w in words)
        return difflib.SequenceMatcher(None, name, k).ratio() + (0.5 if holds_words else 0.0)

    scored = sorted(((score(k), k) for k in known), key=lambda t: (-t[0], t[1]))
    return [k for s, k in scored[:n] if s >= 0.6]


def _known_names() -> Dict[str, list]:
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = json.loads(_HPARAMS_FILE.read_text())
    return _KNOWN


_KNOWN: Optional[Dict[str, list]] = None

_LLAMA_LORA = (".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*o_proj.*", ".*gate_proj.*", ".*up_proj.*", ".*down_proj.*")
# fuse_attention_qkv / fuse_attention_ffn name the fused projections qkv_proj / gate_up_fused_proj
_LLAMA_FUSED_LORA = _LLAMA_LORA + (".*qkv_proj.*", ".*gate_up_fused_proj.*")
_GLM_LORA = (".*query_key_value.*", ".*dense.*", ".*dense_h_to_4h.*", ".*dense_4h_to_h.*")
_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=None, tie_word_embeddings=False)
# Other spellings the GPT-style config classes accept (their `attribute_map`), e.g. in a config.json.
_GPT_NAMES = {"n_positions": "max_position_embeddings", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
              "n_head": "num_attention_heads", "n_inner": "intermediate_size"}

FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("llama", "LlamaForCausalLM", "LlamaConfig", _LLAMA_FUSED_LORA, pipeline_class="LlamaForCausalLMPipe",
           prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
           defaults=_LLAMA_DEFAULTS, aliases=_GPT_NAMES, hf_model_type="llama", hf_architecture="LlamaForCausalLM",
           sp_tokenizer="LlamaTokenizer"),
    # PaddleNLP has no Baichuan class: Baichuan checkpoints load as LlamaForCausalLM (13B: alibi=true).
    Family("baichuan", "LlamaForCausalLM", "LlamaConfig", _LLAMA_FUSED_LORA, pipeline_class="LlamaForCausalLMPipe",
           prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
           defaults=_LLAMA_DEFAULTS, aliases=_GPT_NAMES, hf_model_type="baichuan", hf_architecture="BaichuanForCausalLM",
           hf_fused_qkv="W_pack", sp_tokenizer="LlamaTokenizer"),
    Family("qwen", "QWenForCausalLM", "QWenConfig",
           (".*attn.c_attn.*", ".*attn.c_proj.*", ".*mlp.w1.*", ".*mlp.w2.*", ".*mlp.c_proj.*"),
           pipeline_class="QWenForCausalLMPipe", prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
           kv_heads=None, fixes=("qwen_pipeline_attention_mask",),
           defaults=dict(vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         kv_channels=128, intermediate_size=22016, no_bias=True),
           hf_model_type="qwen", hf_architecture="QWenLMHeadModel"),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", _LLAMA_LORA, pipeline_class="Qwen2ForCausalLMPipe",
           prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
           defaults=dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
           hf_model_type="qwen2", hf_architecture="Qwen2ForCausalLM"),
    # Mistral's rotary places positions after the prefix cache, which per-example position ids cannot reproduce.
    Family("mistral", "MistralForCausalLM", "MistralConfig", _LLAMA_LORA, prefix_cache="batch_heads_seq",
           packing=True,
           defaults=dict(_LLAMA_DEFAULTS, intermediate_size=14336, num_key_value_heads=8),
           hf_model_type="mistral", hf_architecture="MistralForCausalLM",
           sp_tokenizer="LlamaTokenizer"),
    # The router (`gate`) stays frozen under LoRA, as in PaddleNLP's llm tools; w1/w2/w3 are the experts.
    Family("mixtral", "MixtralForCausalLM", "MixtralConfig",
           (".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*o_proj.*", ".*w1.*", ".*w2.*", ".*w3.*"),
           prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
           defaults=dict(_LLAMA_DEFAULTS, intermediate_size=14336, num_key_value_heads=8, num_local_experts=8),
           fixes=("mixtral_moe_routing",), hf_model_type="mixtral", hf_architecture="MixtralForCausalLM",
           sp_tokenizer="LlamaTokenizer"),
    Family("gemma", "GemmaForCausalLM", "GemmaConfig", _LLAMA_LORA, pipeline_class="GemmaForCausalLMPipe",
           prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
           defaults=dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=16, head_dim=256, tie_word_embeddings=True),
           fixes=("gemma_tanh_gelu",), hf_model_type="gemma", hf_architecture="GemmaForCausalLM", sp_tokenizer="GemmaTokenizer",
           hf_config_extra={"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"}),
    # ChatGLM v1 needs [gMASK]/bos inputs, 4-D masks and 2-D position ids that only its own tokenizer builds.
    Family("chatglm", "ChatGLMForCausalLM", "ChatGLMConfig", _GLM_LORA, prefix_cache="seq_batch_heads",
           kv_heads=None, not_trainable="ChatGLM v1 is not trainable by llmx yet; use model=chatglm2 (ChatGLM2/ChatGLM3)",
           defaults=dict(vocab_size=130528, hidden_size=4096, num_hidden_layers=28, num_attention_heads=32,
                         inner_hidden_size=16384),
           aliases={"num_layers": "num_hidden_layers"},
           hf_model_type="chatglm", hf_architecture="ChatGLMForConditionalGeneration", hf_marker="inner_hidden_size"),
    # PaddleNLP's ChatGLM2 always uses multi_query_group_num KV groups (HF's multi_query_attention is not read).
    Family("chatglm2", "ChatGLMv2ForCausalLM", "ChatGLMv2Config", _GLM_LORA, pipeline_class="ChatGLMv2ForCausalLMPipe",
           prefix_cache="seq_batch_heads", packing=True, packing_with_prefix=True, kv_heads="multi_query_group_num",
           fixes=("chatglm2_pipeline_position_ids",),
           defaults=dict(vocab_size=65024, hidden_size=4096, num_hidden_layers=28, num_attention_heads=32,
                         ffn_hidden_size=13696, multi_query_group_num=1, add_bias_linear=False, add_qkv_bias=False,
                         rmsnorm=True, post_layer_norm=True),
           aliases={"num_layers": "num_hidden_layers", "padded_vocab_size": "vocab_size"},
           hf_model_type="chatglm", hf_architecture="ChatGLMModel", hf_marker="multi_query_group_num",
           hf_map_prefix=("chatglm_v2.", "transformer.")),
    # BLOOM's alibi biases by absolute key position: not reproducible per packed example behind a prefix.
    Family("bloom", "BloomForCausalLM", "BloomConfig",
           (".*query_key_value.*", ".*dense.*", ".*dense_h_to_4h.*", ".*dense_4h_to_h.*"),
           prefix_cache="batch_seq_heads", packing=True, heads="n_head", kv_heads=None, layers="n_layer",
           defaults=dict(vocab_size=250880, hidden_size=64, n_layer=2, n_head=8),
           aliases={"num_attention_heads": "n_head", "num_hidden_layers": "n_layer", "n_embed": "hidden_size"},
           fixes=("bloom_zeroed_linears",), hf_model_type="bloom", hf_architecture="BloomForCausalLM"),
    # GPT's learned positions follow the prefix; its generate passes attention_mask=None.
    Family("gpt3", "GPTForCausalLM", "GPTConfig",
           (".*qkv_proj.*", ".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*out_proj.*", ".*linear1.*", ".*linear2.*"),
           pipeline_class="GPTForCausalLMPipe", prefix_cache="batch_seq_heads", prefix_mask="ones_in_front_or_none",
           packing=True, kv_heads=None,
           defaults=dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512),
           aliases=_GPT_NAMES),
    # OPT derives positions from a 2-D mask and takes no 4-D one: no packing.
    Family("opt", "OPTForCausalLM", "OPTConfig",
           (".*project_in.*", ".*project_out.*", ".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*qkv_proj.*",
            ".*out_proj.*", ".*linear1.*", ".*linear2.*"),
           prefix_cache="opt_cache", kv_heads=None, fixes=("opt_missing_attributes", "opt_loss_over_target_tokens"),
           defaults=dict(vocab_size=50272, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                         intermediate_size=8192, max_position_embeddings=2048, word_embed_proj_dim=2048,
                         normalize_before=True),
           aliases={"ffn_dim": "intermediate_size"},
           # HF's OPTForCausalLM ties lm_head to the embedding and does not save it; PaddleNLP's keeps its own
           # lm_head.decoder_weight, which PaddleNLP's converter leaves random.
           hf_model_type="opt", hf_architecture="OPTForCausalLM",
           hf_config_keys={"intermediate_size": "ffn_dim", "normalize_before": "do_layer_norm_before",
                           "hidden_act": "activation_function", "hidden_dropout_prob": "dropout",
                           "attention_probs_dropout_prob": "attention_dropout"},
           hf_tied_head=("lm_head.decoder_weight", "lm_head.weight", "model.decoder.embed_tokens.weight")),
    # Yuan's localized-filtering convolution mixes neighbouring examples (no packing), and in training it
    # builds its own [b, 1, s, s] mask and rejects a prefix cache.
    Family("yuan", "YuanForCausalLM", "YuanConfig", _LLAMA_LORA,
           no_tensor_parallel="PaddleNLP 3.0.0b4 splits Yuan's fused q/k projections inconsistently (a pretrained "
                              "checkpoint fails to load split; a split random init computes other attention than one "
                              "process); use dp or sharding",
           no_prefix="in training Yuan builds its own attention mask and rejects a prefix cache",
           defaults=dict(vocab_size=135040, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=None),
           fixes=("yuan_loss_over_target_tokens",), hf_model_type="yuan", hf_architecture="YuanForCausalLM"),
)}


def family_of_hf_config(config: Mapping[str, Any]) -> Optional[str]:
    """The family of a Hugging Face config.json (its model_type, then a marker key among families sharing
    it), or None."""
    kind = config.get("model_type")
    found = [f for f in FAMILIES.values() if f.hf_model_type == kind]
    if len(found) > 1:
        found = [f for f in found if f.hf_marker is None or f.hf_marker in config] or found
        found = [f for f in found if f.name != "baichuan"] if kind == "llama" else found
    return found[0].name if found else None


def family_of_paddle_config(config: Mapping[str, Any]) -> Optional[str]:
    """The family of a PaddleNLP/llmx config.json, by its architecture (a pipeline class names its single
    model's class); Llama and Baichuan share a class: Llama. None if no family has it."""
    names = [n[: -len("Pipe")] if n.endswith("Pipe") else n for n in (config.get("architectures") or [])]
    for fam in FAMILIES.values():
        if fam.architecture in names and (fam.name != "chatglm" or "inner_hidden_size" in config):
            return fam.name
    return None


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"model.family={name!r}: allowed: {', '.join(FAMILIES)}") from None
