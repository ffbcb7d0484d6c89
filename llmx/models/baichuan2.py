"""Baichuan 2: PaddleNLP's Llama (its fused-q/k/v Baichuan checkpoints load as LlamaForCausalLM; the 13B's ALiBi
is LlamaConfig's `alibi`) with Baichuan 2's NormHead: the head's rows (one per vocabulary entry) are scaled to
unit L2 norm before they multiply the hidden states. Baichuan's own code normalises them at every training
step and once, in place, in evaluation; normalising is idempotent, so here the logits of the raw weight are
divided by each row's norm at every forward, in training and evaluation alike: the same logits, and the stored
weight stays what was trained (or converted)."""
from __future__ import annotations

import paddle
from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM, LlamaForCausalLMPipe
from paddlenlp.transformers.llama.modeling import LlamaLMHead
from paddlenlp.transformers.llama.modeling_pp import LlamaLMHeadPipe

__all__ = ["LlamaConfig", "Baichuan2ForCausalLM", "Baichuan2ForCausalLMPipe", "NormHead"]

# torch.nn.functional.normalize's floor on a row's norm (Baichuan's NormHead uses its default)
NORM_EPS = 1e-12


class NormHeadMixin:
    """A LlamaLMHead whose logits are those of its weight with unit-norm vocabulary rows."""

    def forward(self, hidden_states, tensor_parallel_output=None):
        logits = super().forward(hidden_states, tensor_parallel_output)
        # The weight is [hidden, vocab] (or [vocab, hidden] when tied to the embedding): one norm per vocab entry,
        # local to a tensor-parallel shard, which splits the vocabulary.
        norms = paddle.linalg.norm(self.weight.astype("float32"), p=2, axis=1 if self.transpose_y else 0)
        norms = paddle.clip(norms, min=NORM_EPS)
        if norms.shape[-1] != logits.shape[-1]:  # logits gathered over tensor-parallel ranks: gather the norms too
            from paddle.distributed import fleet

            group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
            norms = paddle.distributed.collective._c_concat(norms.unsqueeze(0), group=group)[0]
        return (logits.astype("float32") / norms).astype(logits.dtype)


class NormHead(NormHeadMixin, LlamaLMHead):
    pass


class NormHeadPipe(NormHeadMixin, LlamaLMHeadPipe):
    pass


class Baichuan2ForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        # NormHead holds nothing of its own: the head LlamaForCausalLM built (its parameter drawn as Llama's)
        # becomes one, rather than a second [hidden, vocab] weight being drawn and dropped.
        self.lm_head.__class__ = NormHead


class Baichuan2ForCausalLMPipe(LlamaForCausalLMPipe):
    """LlamaForCausalLMPipe with the NormHead as its last stage's head."""

    def add_sequential_layer(self, layer_desc, name_prefix=""):
        if layer_desc.layer_func is LlamaLMHeadPipe:  # (a LayerDesc, or a SharedLayerDesc when tied)
            layer_desc.layer_func = NormHeadPipe
        super().add_sequential_layer(layer_desc, name_prefix)
