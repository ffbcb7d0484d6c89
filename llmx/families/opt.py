"""OPT (PaddleNLP's OPTForCausalLM). It derives positions from a 2-D mask and takes no 4-D one: no packing."""
from __future__ import annotations

from typing import Any, Dict

from llmx.families.fixes import before_build, mean_over_target_tokens
from llmx.families.formulas import gpt_opt_layer
from llmx.families.record import Family, Params


def count_params(hp: Dict[str, Any]) -> Params:
    """OPT: word embeddings of word_embed_proj_dim (projected in and out when that differs from hidden;
    None: hidden), learned positions with an offset of 2, a final LayerNorm only with normalize_before, and
    an lm_head that PaddleNLP 3.0.0b4 always creates as its own [vocab, hidden] parameter (not tied)."""
    h, V = hp["hidden_size"], hp["vocab_size"]
    proj = hp["word_embed_proj_dim"] if hp.get("word_embed_proj_dim") is not None else h
    projection = proj * h if proj != h else 0
    embed = V * proj + (hp["max_position_embeddings"] + 2) * h + projection
    head = (2 * h if hp["normalize_before"] else 0) + projection + V * h
    return Params(gpt_opt_layer(h, hp["intermediate_size"]), hp["num_hidden_layers"], embed=embed, head=head)


@before_build
def opt_missing_attributes(model=None) -> None:
    """OPTForCausalLM.__getattr__ falls back to `config[name]`, which is None for any name the config
    lacks, so `hasattr(model, "no_sync")` holds and PaddleNLP's Trainer calls None under gradient
    accumulation (paddlenlp 3.0.0b4). Fall back to the config only for names it has. Can go when
    OPTForCausalLM raises AttributeError for names its config lacks."""
    from paddle import nn
    from paddlenlp.transformers.opt.modeling import OPTForCausalLM

    def __getattr__(self, name):
        try:
            return nn.Layer.__getattr__(self, name)
        except AttributeError:
            base = nn.Layer.__getattr__(self, self.base_model_prefix)
            if hasattr(base, name):
                return getattr(base, name)
            if hasattr(base.config, name):
                return getattr(base.config, name)
            raise

    OPTForCausalLM.__getattr__ = __getattr__


@before_build
def opt_loss_over_target_tokens(model=None) -> None:
    """OPTForCausalLM's loss: see llmx.families.fixes.mean_over_target_tokens (paddlenlp 3.0.0b4 on
    paddle 3.3.1). Can go when its criterion divides by the target tokens."""
    from paddlenlp.transformers.opt.modeling import OPTForCausalLM

    mean_over_target_tokens(OPTForCausalLM)


FAMILY = Family(
    "opt", "OPTForCausalLM", "OPTConfig",
    (".*project_in.*", ".*project_out.*", ".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*qkv_proj.*",
     ".*out_proj.*", ".*linear1.*", ".*linear2.*"),
    prefix_cache="opt_cache", kv_heads=None,
    no_4d_mask="PaddleNLP's OPTModel derives its positions from a 2-D attention mask", fixes=(opt_missing_attributes, opt_loss_over_target_tokens),
    # Positions come from the mask's running count (position_ids are ignored): a left-padded row computes what it
    # computes alone.
    engine_cache="cache",
    no_static="paddle.jit.to_static (paddle 3.3.1) fails in PaddleNLP's OPTModel._prepare_decoder_attention_mask; "
              "use stage.mode=dynamic",
    defaults=dict(vocab_size=50272, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                  intermediate_size=8192, max_position_embeddings=2048, word_embed_proj_dim=2048,
                  normalize_before=True),
    aliases={"ffn_dim": "intermediate_size"}, count_params=count_params,
    # HF's OPTForCausalLM ties lm_head to the embedding and does not save it; PaddleNLP's keeps its own
    # lm_head.decoder_weight, which PaddleNLP's converter leaves random.
    hf_model_type="opt", hf_architecture="OPTForCausalLM",
    hf_config_keys={"intermediate_size": "ffn_dim", "normalize_before": "do_layer_norm_before",
                    "hidden_act": "activation_function", "hidden_dropout_prob": "dropout",
                    "attention_probs_dropout_prob": "attention_dropout"},
    hf_tied_head=("lm_head.decoder_weight", "lm_head.weight", "model.decoder.embed_tokens.weight"))
