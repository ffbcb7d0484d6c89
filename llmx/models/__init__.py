"""Model code llmx writes itself, one module per family PaddleNLP 3.0.0b4 has no model code for, built on
PaddleNLP's building blocks of the nearest family (its attention, MLP, norms, pretrained-model machinery,
name maps and tensor-parallel split actions). A family's record names its module in `Family.classes`.

These modules import paddle: only the engine and conversion load them (through `Family.load_class`).
"""


def sum_gradient_over_tensor_parallel_ranks(parameter) -> None:
    """For a weight every tensor-parallel rank holds whole but applies to its own part of the heads (Qwen3's and
    Gemma 3's per-head q/k norms): each rank sees a part of its gradient, so the gradient is summed over the ranks
    before the optimizer (or the clipping) reads it."""

    def summed(grad):
        from paddle.distributed import all_reduce, fleet

        grad = grad.clone()
        all_reduce(grad, group=fleet.get_hybrid_communicate_group().get_model_parallel_group())
        return grad

    parameter.register_hook(summed)
