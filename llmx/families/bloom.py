"""BLOOM (PaddleNLP's BloomForCausalLM). Its ALiBi biases by absolute key position: packing, but not
reproducible per packed example behind a prefix."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families.fixes import after_random_init
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """BLOOM: ALiBi (no position parameters), LayerNorms with bias (one more right after the embedding),
    biased Linears, MLP fixed at 4*hidden; lm_head tied to the word embedding."""
    h, V = hp["hidden_size"], hp["vocab_size"]
    layer = 2 * 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    return Params(layer, hp["n_layer"], embed=V * h + 2 * h, head=2 * h + V * h, shared=V * h)


@after_random_init
def bloom_zeroed_linears(model=None) -> None:
    """BLOOM's _init_weights zeroes every Linear weight (it meant the bias), leaving a random-init BLOOM
    with all-zero attention and MLP weights that never train (paddlenlp 3.0.0b4). Draw them from
    N(0, initializer_range). Can go when BloomPreTrainedModel._init_weights zeroes only biases."""
    if model is None:
        return
    import paddle

    std = getattr(model.config, "initializer_range", 0.02)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Linear) and float(layer.weight.abs().max()) == 0.0:
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))


FAMILY = Family(
    "bloom", "BloomForCausalLM", "BloomConfig",
    (".*query_key_value.*", ".*dense.*", ".*dense_h_to_4h.*", ".*dense_4h_to_h.*"),
    prefix_cache="batch_seq_heads", packing=True, heads="n_head", kv_heads=None, layers="n_layer",
    # ALiBi biases by the mask's running count: a left-padded row computes what it computes alone.
    engine_cache="cache",
    no_static="paddle.jit.to_static (paddle 3.3.1) fails in PaddleNLP's BloomModel._prepare_attn_mask; "
              "use stage.mode=dynamic",
    defaults=dict(vocab_size=250880, hidden_size=64, n_layer=2, n_head=8),
    aliases={"num_attention_heads": "n_head", "num_hidden_layers": "n_layer", "n_embed": "hidden_size"},
    count_params=count_params, fixes=(bloom_zeroed_linears,), hf_model_type="bloom",
    hf_architecture="BloomForCausalLM")
