"""ReFT (LoReFT) through PaddleNLP's ReFTModel: low-rank interventions on decoder-layer outputs at
chosen prompt positions.

PaddleNLP leaves three things to its own scripts that llmx's engine needs here: the interventions are
held in a plain dict (so `parameters()` misses them: optimizers, counts and dp gradient syncs would),
every batch must carry `intervention_locations`, and its saved config.json is not recognisable as an
adapter's (llmx adds a marker file with the positions).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import paddle
from omegaconf import DictConfig
from paddle import nn
from paddlenlp.peft.reft import ReFTConfig, ReFTModel
from paddlenlp.peft.reft.interventions import LoreftIntervention

from llmx.schema import reft_positions
from llmx.tokens import IGNORE_INDEX

MARKER = "llmx_reft.json"  # llmx.sources.ADAPTER_CONFIGS recognises an adapter directory by it


class LlmxReFTModel(ReFTModel):
    def __init__(self, config, model):
        super().__init__(config, model)
        # Registered as sublayers, the interventions are what parameters() and state_dict() see.
        self.intervention_layers = nn.LayerList([self.interventions[k][0] for k in self.sorted_keys])
        self.llmx_positions = reft_positions(config.position)

    def from_pretrained(self, load_directory, model=None):
        """The Trainer resumes a ReFT run with `self.model.from_pretrained(checkpoint, self.model.model)`, which
        in PaddleNLP 3.0.0b4 builds a new model and drops it (the run would go on from fresh interventions).
        Here the checkpoint's interventions are loaded into this model. Can go when ReFTModel.from_pretrained
        loads into the model it is called on."""
        _load_interventions(self, load_directory)
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        """The base model's generate with the interventions on the prompt (the first forward of each
        layer: the prefill), at positions found from the left-padded attention mask; the same call as
        any model's, so llmx's generation needs no ReFT case."""
        mask = attention_mask.numpy()
        pads, lengths = (mask == 0).sum(-1), mask.sum(-1)
        per_row = [locations(int(n), *self.llmx_positions, offset=int(pad)) for n, pad in zip(lengths, pads)]
        self._reset_hook_count()
        handlers = self._wait_for_forward_with_intervention([per_row] * len(self.sorted_keys))
        try:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            handlers.remove()
            self._reset_hook_count()

    def save_pretrained(self, save_directory, **kwargs):
        super().save_pretrained(save_directory)
        Path(save_directory, MARKER).write_text(json.dumps({"positions": self.config.position}, indent=2) + "\n")


def wrap_reft(model, cfg: DictConfig):
    p = cfg.stage.peft
    layers = list(p.reft_layers) if p.reft_layers is not None else list(range(model.config.num_hidden_layers))
    params = {"embed_dim": model.config.hidden_size, "low_rank_dimension": p.reft_rank, "dropout": p.reft_dropout,
              "dtype": cfg.model.dtype, "act_fn": None}
    representations = [{"layer": layer, "component": "block_output", "low_rank_dimension": p.reft_rank,
                        "intervention": LoreftIntervention(**params)} for layer in layers]
    config = ReFTConfig(representations=representations, intervention_params=params, position=p.reft_positions)
    return LlmxReFTModel(config, model)


def load_reft(model, path: str):
    config = ReFTConfig.from_pretrained(path)
    config.position = json.loads(Path(path, MARKER).read_text())["positions"]
    return _load_interventions(LlmxReFTModel(config, model), path)


def _load_interventions(wrapped: LlmxReFTModel, path: str) -> LlmxReFTModel:
    for key in wrapped.sorted_keys:
        wrapped.interventions[key][0].load_state_dict(paddle.load(str(Path(path, f"intkey_{key}.bin"))))
    return wrapped


def locations(prompt_len: int, first: int, last: int, offset: int = 0) -> list:
    """The intervened positions of one prompt: its first `first` and last `last` tokens (repeating the
    prompt's end when it is shorter), shifted by `offset` (left padding)."""
    head = [min(i, prompt_len - 1) for i in range(first)]
    tail = [max(prompt_len - last + i, 0) for i in range(last)]
    return [offset + i for i in head + tail]


class ReftCollator:
    """Adds `intervention_locations` [batch, layers, positions] to another collator's batches; a prompt
    ends where its labels begin (labels are shifted: position i predicts token i + 1)."""

    def __init__(self, collator, model: LlmxReFTModel):
        self.collator = collator
        self.first, self.last = model.llmx_positions
        self.interventions = len(model.sorted_keys)
        self.carries_global_targets = getattr(collator, "carries_global_targets", False)

    def __call__(self, features: Sequence[dict]) -> dict:
        batch = self.collator(features)
        rows = []
        for f in features:
            labels = np.asarray(f["labels"])
            answer = np.flatnonzero(labels != IGNORE_INDEX)
            prompt_len = int(answer[0]) + 1 if len(answer) else len(labels)
            rows.append([locations(prompt_len, self.first, self.last)] * self.interventions)
        batch["intervention_locations"] = paddle.to_tensor(np.asarray(rows, dtype="int64"))
        return batch
