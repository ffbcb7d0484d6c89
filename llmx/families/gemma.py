"""Gemma (PaddleNLP's GemmaForCausalLM): LLaMA's shape with a head_dim of its own, GeGLU, tied embeddings."""
from __future__ import annotations

from llmx.families import llama
from llmx.families.fixes import before_build
from llmx.families.formulas import llama_like
from llmx.families.record import Family


@before_build
def gemma_tanh_gelu(model=None) -> None:
    """PaddleNLP's GemmaMLP applies exact gelu (F.gelu) whatever the config says (paddlenlp 3.0.0b4); Gemma
    was trained with the tanh approximation, which transformers uses (gelu_pytorch_tanh): converted Gemma
    checkpoints were off by ~4e-3 in the logits. Use the tanh approximation. Can go when GemmaMLP reads
    the config's hidden_activation."""
    import paddle.nn.functional as F
    from paddlenlp.transformers.gemma.modeling import GemmaMLP

    if getattr(GemmaMLP.forward, "llmx_fixed", False):
        return

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))

    forward.llmx_fixed = True
    GemmaMLP.forward = forward


FAMILY = Family(
    "gemma", "GemmaForCausalLM", "GemmaConfig", llama.LORA, pipeline_class="GemmaForCausalLMPipe",
    no_static="paddle.jit.to_static (paddle 3.3.1) fails in PaddleNLP's Gemma model code (a Python `if` on a "
              "tensor value, which it cannot trace); use stage.mode=dynamic",
    # GemmaForCausalLMPipe shares the embedding with the head unconditionally (paddlenlp 3.0.0b4): an untied
    # model's [hidden, vocab] head would receive the [vocab, hidden] embedding; such a model is refused under pp.
    pipeline_ties=True,
    rope_layout="batch_seq_heads_dim",
    prefix_cache="batch_seq_heads", packing=True, packing_with_prefix=True,
    defaults=dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, tie_word_embeddings=True),
    count_params=llama_like, fixes=(gemma_tanh_gelu,),
    hf_model_type="gemma", hf_architecture="GemmaForCausalLM", sp_tokenizer="GemmaTokenizer",
    hf_config_extra={"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"})
