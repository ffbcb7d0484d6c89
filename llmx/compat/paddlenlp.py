"""PaddleNLP patches (found in paddlenlp 3.0.0b4): upstream code llmx replaces or wraps.

Each patch says the problem and when it can go; tests/quick/test_compat.py fails when the
upstream behaviour a patch relies on changes. (Family-specific fixes live with their family in
llmx.families; trl's in llmx.compat.trl. llmx's own logic that works around an upstream limit
stays where it is, with a comment in the same form: engine.peft, engine.checkpoint, engine.reft.)

- `merge_adapter_layer`: merging a trained adapter layer into its weight. LoKrLinear.merge
  calls a `get_weight()` that does not exist; MoRA's `get_delta_weight` disagrees with its own
  forward (a merged tiny model's eval loss was 6.25 where base + adapter's is 5.91). Can go when
  both merge correctly upstream.
- `bool_pipeline_attention_masks`: PaddleNLP's Llama pipeline stages take an int64
  `attention_mask` on GPU for position ids (and int32 for FlashMask row indices); llmx's padded
  batches carry a 0/1 int64 mask. Can go when the pipeline tells masks from position ids by
  something other than their dtype.
- `restrict_torch_unpickling`: `paddlenlp.utils.serialization.load_torch` (its reader of a
  `pytorch_model.bin`) resolves every global but torch's own through plain `pickle`, so the file
  can run code. Other globals go through llmx.safe_pickle. Can go when load_torch refuses them.
"""
from __future__ import annotations

import paddle

from llmx import safe_pickle


def merge_adapter_layer(layer) -> None:
    """Fold one adapter layer (LoRA and its variants, LoKr, VeRA) into its weight, as its forward computes."""
    if type(layer).__name__ == "LoKrLinear":
        # Its forward adds x @ get_adapter_weight() (already scaled).
        _add_delta(layer, layer.get_adapter_weight())
    elif getattr(layer, "use_mora", False):
        # MoRA's update is linear in x, so its matrix is the update applied to the identity.
        with paddle.no_grad():
            _add_delta(layer, layer._apply_mora(paddle.eye(layer.weight.shape[0], dtype=layer.weight.dtype)))
    else:
        layer.merge()


def _add_delta(layer, delta) -> None:
    if not layer.merged:
        layer.weight.set_value(layer.weight + delta.astype(layer.weight.dtype))
        layer.merged = True


def bool_pipeline_attention_masks(model) -> None:
    """Hand `model`'s pipeline a bool mask, which every device reads as a mask (a no-op for a
    model the Trainer splits by default: input_ids, attention_mask, position_ids | labels)."""
    prepare = getattr(model, "_prepare_pipeline_inputs_func", None)
    if prepare is None:
        return

    def prepare_inputs(inputs):
        batches = [inputs] if isinstance(inputs, dict) else inputs
        for batch in batches:
            mask = batch.get("attention_mask")
            if mask is not None and mask.dtype in (paddle.int64, paddle.int32):
                batch["attention_mask"] = mask.astype("bool")
        return prepare(inputs)

    model._prepare_pipeline_inputs_func = prepare_inputs


def restrict_torch_unpickling() -> None:
    """Idempotent (module docstring)."""
    from paddlenlp.utils import serialization

    wrapper = serialization.UnpicklerWrapperStage
    if getattr(wrapper, "_llmx_restricted", False):
        return
    torch_globals = wrapper.find_class

    def find_class(self, module, name):
        if safe_pickle.trusted() or module == "torch._utils" or (isinstance(name, str) and "Storage" in name):
            return torch_globals(self, module, name)  # torch's rebuild functions, mapped to numpy by PaddleNLP
        if (module, name) == ("torch", "Size"):
            return tuple
        return safe_pickle.data_global(module, name, getattr(self, "llmx_source", "pytorch_model.bin"))

    wrapper.find_class = find_class
    wrapper._llmx_restricted = True
