"""The record of one model family (`Family`) and the parameter count its formula returns (`Params`).

Paddle-free: validation and `plan` read records without building anything.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from llmx.errors import ConfigError

HPARAMS_FILE = Path(__file__).with_name("hparams.json")


@dataclass
class Params:
    """A model's parameters by where they live: `layers` identical decoder layers of `layer` each;
    `embed` on the input side (token/position embeddings and what belongs to them: first pipeline
    stage); `head` on the output side (final norm, lm_head: last pipeline stage). With tied
    embeddings the token embedding is in both `embed` and `head` and `shared` says how big it is:
    one model holds it once, but with pp > 1 the first and the last stage each hold a copy
    (PaddleNLP's SharedLayerDesc)."""

    layer: int
    layers: int
    embed: int
    head: int
    shared: int = 0
    # Mixture-of-experts: what one token uses of a layer (the router's top-k experts, shared experts, attention);
    # None = all of it.
    active_layer: Optional[int] = None
    # Decoder layers unlike `layer` (DeepSeek-V3's leading dense layers), all their parameters together.
    other_layers: int = 0

    @property
    def total(self) -> int:
        return self.layers * self.layer + self.other_layers + self.embed + self.head - self.shared

    @property
    def active(self) -> int:
        """The parameters one token's forward uses (= total but for mixtures of experts)."""
        per_layer = self.layer if self.active_layer is None else self.active_layer
        return self.layers * per_layer + self.other_layers + self.embed + self.head - self.shared


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # class in paddlenlp.transformers
    config_class: str  # class in paddlenlp.transformers
    lora_targets: Tuple[str, ...]  # module-name regexes LoRA wraps by default
    pipeline_class: Optional[str] = None  # PaddleNLP's pipeline-parallel class, if it has one
    pipeline_ties: bool = False  # that class ties the head to the embedding whatever tie_word_embeddings says
    # Prefix tuning: how this family's attention takes a past key/value cache (a layout name in
    # llmx.engine.prefix_hooks), or None with the reason in `no_prefix`.
    prefix_cache: Optional[str] = None
    prefix_mask: Optional[str] = None  # how to widen the attention mask over the prefix (None: prepend ones)
    no_prefix: str = ""
    # Zero padding (packing): the attention takes a block-diagonal [b, 1, s, s] mask with per-example
    # position ids, so a packed forward equals separate ones (tests/test_packing.py).
    packing: bool = False
    packing_with_prefix: bool = False  # and still so behind a prefix cache
    # Why the model takes no 4-D attention mask ("" = it does): DPO/KTO's rows (trl's: several sequences in one
    # row, a DPO row's rejected answer blind to its chosen one) need one.
    no_4d_mask: str = ""
    not_trainable: str = ""  # why llmx cannot train it yet ("" = it can)
    # How SFT examples and prompts become model inputs: `causal` (llmx.data.sft: prompt then answer, 1-D positions,
    # a causal mask) or `glm` (llmx.data.glm, ChatGLM v1: prompt + [gMASK] + bos + answer + eos, 2-D positions, a
    # 4-D mask bidirectional over the prompt). A family of another encoding trains with stage=sft only.
    encoding: str = "causal"
    # Special tokens the encoding needs, by tokenizer attribute (bos_token, ..., or a name of its own such as
    # gmask_token): added to a tokenizer that lacks them (the bundled tiny one) when it is built.
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    no_tensor_parallel: str = ""  # why it cannot be split over tensor-parallel ranks ("" = it can)
    no_sequence_parallel: str = ""  # why its tensor-parallel layers cannot also split the sequence ("" = they can)
    # Why llmx's inference engine (llmx.infer) does not run it ("" = it does: checked at the tiny sizes, the
    # engine's batched greedy tokens equal PaddleNLP's `generate` one prompt at a time).
    no_engine: str = ""
    # How the family's forward takes its KV cache, a runner in llmx.infer.runners.RUNNERS: `past_key_values`
    # (new tokens only), `cache` (the same as `cache=`: PaddleNLP's Bloom and OPT), `whole_sequence` (Yuan: each
    # step's whole sequence of ids, rows run one at a time). What each layer's entry holds the engine reads off it.
    engine_cache: str = "past_key_values"
    # Why a left-padded prompt does not compute what it computes alone ("" = it does: positions come from
    # position_ids or the mask's running count, and pads are masked out): what runs a padded batch without a
    # cache (static mode, adapters run without a KV cache) is refused.
    no_padded_batch: str = ""
    # The base model (`base_model`, under the LM head) answers hidden states [seq, batch, hidden] (ChatGLM's),
    # not [batch, seq, hidden]: what reads them besides the family's own head (llmx.engine.score) transposes.
    hidden_seq_first: bool = False
    no_static: str = ""  # why the engine's static mode (llmx.infer.export) cannot export it ("" = it can)
    # RoPE scaling (model.rope_scaling, or a checkpoint's config.json rope_scaling; llmx.rope): how the family's
    # rotary layers lay out the cos/sin tables they return, a name in llmx.engine.rope.LAYOUTS. llmx.engine.rope
    # recomputes the tables of every sublayer named `rotary_emb` that has PaddleNLP's Llama-style interface
    # (attributes `dim` and `base`, `forward(x, seq_len) -> (cos, sin)`: Llama's, Qwen2's, Qwen2-MoE's, Mistral's,
    # Mixtral's, Gemma's and Yuan's classes), so a family built on one of those classes names its layout here and
    # takes every scaling type. None: a scaling is refused, with the reason in `no_rope_scaling`.
    rope_layout: Optional[str] = None
    no_rope_scaling: str = ""
    # Canonical names of the hyperparameters layouts depend on (after `aliases`).
    heads: str = "num_attention_heads"
    kv_heads: Optional[str] = "num_key_value_heads"  # None: one KV head per query head
    layers: str = "num_hidden_layers"
    vocab: str = "vocab_size"
    # Config class defaults of the keys llmx's formulas read (tests compare them with PaddleNLP).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)  # another accepted spelling -> the name used here
    # Every hyperparameter name the config class accepts: None = the family's entry of hparams.json (generated
    # from PaddleNLP for llmx's own families); a family without one there has its names left unchecked.
    hparams: Optional[Tuple[str, ...]] = None
    # The parameter count (llmx.plan) of the hyperparameters (`hyperparameters()`'s), exact against the built
    # PaddleNLP model (tests/runs/test_families.py); formulas several families share: llmx.families.formulas.
    count_params: Optional[Callable[[Dict[str, Any]], Params]] = None
    # Workarounds of upstream bugs, applied when the family is built: functions marked with their phase
    # (llmx.families.fixes.before_build / after_random_init).
    fixes: Tuple[Callable, ...] = ()
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
    hf_map_prefix: Optional[Tuple[str, str]] = None  # (PaddleNLP, HF) prefixes PaddleNLP's name map leaves off
    # (HF name, PaddleNLP name, transpose) of every tensor, for a class whose _get_name_mappings PaddleNLP leaves
    # unwritten (ChatGLM v1): a function of the PaddleNLP config, by llmx.
    hf_name_map: Optional[Callable[[Any], Sequence[Tuple[str, str, bool]]]] = None
    hf_fused_qkv: Optional[str] = None  # HF's name of one fused q/k/v weight that PaddleNLP's class keeps as three
    # Config values that HF's config.json implies rather than states (Baichuan: ALiBi where it has no
    # max_position_embeddings; DeepSeek-V3: noaux_tc routing on sigmoid scores, which transformers has no keys
    # for): HF config -> PaddleNLP keys to set; and its inverse, the HF config.json (as
    # hf_config made it) -> the one the checkpoint's own code reads.
    hf_config_in: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
    hf_config_out: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
    # A key every PaddleNLP config.json of this family holds, where another family's class has the same name
    # in `architectures` (ChatGLM v1's inner_hidden_size).
    paddle_marker: Optional[str] = None
    # Whether a PaddleNLP config.json naming `architecture` reads as this family; False where another family
    # owns the class (Baichuan loads as Llama's class: a saved Baichuan reads as Llama).
    owns_architecture: bool = True
    sp_tokenizer: Optional[str] = None  # PaddleNLP class that reads the family's SentencePiece tokenizer.model
    # The module holding `architecture`, `config_class` and `pipeline_class`: paddlenlp.transformers, or for a
    # family PaddleNLP has no model code for, the module llmx writes it in (llmx.models.<family>) on PaddleNLP's
    # building blocks.
    classes: str = "paddlenlp.transformers"

    # -------------------------------------------------------------- classes
    def load_class(self, which: str = "architecture"):
        """The class the record names in `which` (architecture, config_class, pipeline_class), imported from
        `classes` (paddle comes with it)."""
        import importlib

        name = getattr(self, which)
        found = getattr(importlib.import_module(self.classes), name, None) if name else None
        if found is None:  # the record names a class the pinned library lacks
            raise ConfigError(f"model family {self.name}: {self.classes} has no class {name!r} "
                              f"(llmx.families expects paddlenlp==3.0.0b4)")
        return found

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

    def known_hyperparameters(self) -> Optional[set]:
        """Every name the config class accepts or the model reads (`hparams`, by default hparams.json,
        generated from PaddleNLP); None when the family lists none."""
        names = self.hparams if self.hparams is not None else _generated_names().get(self.name)
        return None if names is None else set(names) | set(self.aliases)

    def check_hyperparameter_names(self, names, where: str) -> None:
        known = self.known_hyperparameters()
        if known is None:
            return
        for name in names:
            if name not in known:
                close = close_matches(name, known)
                hint = f"did you mean {', '.join(close)}?" if close else "not a hyperparameter of " + self.config_class
                raise ConfigError(f"{where}.{name}: unknown hyperparameter for model family {self.name} ({hint})")

    # -------------------------------------------------------------- parameters
    def params(self, given: Mapping[str, Any]) -> Params:
        """The parameter count of `given` (a size, a config.json, overrides), by the family's formula."""
        if self.count_params is None:
            raise ConfigError(f"model family {self.name} gives no parameter formula (Family.count_params)")
        return self.count_params(self.hyperparameters(given))


def close_matches(name: str, known, n: int = 3) -> list:
    """Known names like `name`: by spelling, and names holding all of its words (num_head ->
    num_attention_heads) ahead of mere look-alikes (num_beams)."""
    words = [w for w in name.lower().split("_") if w]

    def score(k: str) -> float:
        holds_words = all(w in k.lower() for w in words)
        return difflib.SequenceMatcher(None, name, k).ratio() + (0.5 if holds_words else 0.0)

    scored = sorted(((score(k), k) for k in known), key=lambda t: (-t[0], t[1]))
    return [k for s, k in scored[:n] if s >= 0.6]


def _generated_names() -> Dict[str, list]:
    global _GENERATED
    if _GENERATED is None:
        _GENERATED = json.loads(HPARAMS_FILE.read_text())
    return _GENERATED


_GENERATED: Optional[Dict[str, list]] = None
