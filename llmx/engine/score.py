"""Score models: a causal LM's backbone with a scalar head, for reward models (stage=rm), PPO's critic
and `stage=infer stage.task=score`.

PaddleNLP's pip package has no score model for its causal-LM families (its RLHF example keeps one out of
the package), so this one is llmx's: it reads the backbone's last hidden states (after the final norm)
through `base_model`, which every PaddleNLP family has, and adds one Linear(hidden, 1) in float32. The
value of a sequence is the head's output at its last real token; a critic reads it at every position.

On disk a score model is an ordinary model (or adapter) directory, loadable by every stage, plus
`score_head.safetensors` (written last, atomically), which marks the directory as a score model.
Training one (the pairwise loss) is llmx.align.reward's; this module holds what its users share.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import paddle
from omegaconf import DictConfig, OmegaConf

from llmx.engine.peft import SAME_FORWARD_WRAPPERS
from llmx.families import FAMILIES
from llmx.sources import SCORE_HEAD, score_head_file


def backbone(model):
    """The transformer under the LM head, through any adapter wrapper."""
    return _causal_lm(model).base_model


def _causal_lm(model):
    return model.model if type(model).__name__ in SAME_FORWARD_WRAPPERS else model


def _hidden_seq_first(lm) -> bool:
    """Whether `lm`'s backbone answers [seq, batch, hidden] (the family record says)."""
    name = type(_causal_lm(lm)).__name__
    return any(f.hidden_seq_first for f in FAMILIES.values() if f.architecture == name)


def score_head(hidden: int, head_state: dict | None = None) -> paddle.nn.Linear:
    """The scalar head: Linear(hidden, 1), from `head_state` or freshly drawn (from the global generator)."""
    head = paddle.nn.Linear(hidden, 1)
    with paddle.no_grad():
        if head_state is None:  # small outputs at the start: the pairwise loss starts near ln 2
            head.weight.set_value(paddle.normal(0.0, 1.0 / (hidden + 1) ** 0.5, [hidden, 1]))
            head.bias.set_value(paddle.zeros([1]))
        else:
            head.weight.set_value(paddle.to_tensor(head_state["weight"]))
            head.bias.set_value(paddle.to_tensor(head_state["bias"]))
    return head


def at_last_token(values, attention_mask):
    """One value per row of per-position `values`: at its last real token (rows padded on the right)."""
    last = attention_mask.astype("int64").sum(axis=-1) - 1
    return paddle.take_along_axis(values, last.unsqueeze(-1), axis=-1).squeeze(-1)


class ScoreModel(paddle.nn.Layer):
    def __init__(self, lm, head_state: dict | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config  # PaddleNLP's Trainer reads the model's config
        self.head = score_head(lm.config.hidden_size, head_state)
        self.seq_first = _hidden_seq_first(lm)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        """Per-position values [rows, T] (float32)."""
        out = backbone(self.lm)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                return_dict=False)
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        if self.seq_first:
            hidden = hidden.transpose([1, 0, 2])
        return self.head(hidden.astype("float32")).squeeze(-1)

    def score(self, input_ids, attention_mask):
        """One value per row: at its last real token (rows padded on the right)."""
        return at_last_token(self(input_ids, attention_mask=attention_mask), attention_mask)


def save_head(model, out_dir: Path) -> Path:
    """score_head.safetensors of `model` (a ScoreModel, or anything holding the head as `.head`) into `out_dir`
    (an exported model or adapter dir), written to a temp name first."""
    from safetensors.numpy import save_file

    path = Path(out_dir) / SCORE_HEAD
    tmp = path.with_name(f".{SCORE_HEAD}.tmp")
    save_file({"weight": model.head.weight.numpy(), "bias": model.head.bias.numpy()}, str(tmp),
              metadata={"format": "np", "hidden_size": str(model.head.weight.shape[0])})
    os.replace(tmp, path)
    return path


def load_head(path) -> dict:
    from safetensors.numpy import load_file

    return {k: np.asarray(v) for k, v in load_file(str(path)).items()}


def load_score_model(m: DictConfig, name_or_path: str, tokenizer, seed: int) -> ScoreModel:
    """The score model saved at `name_or_path` (a reward-model run, or its model/adapter dir), built with the
    family settings of `m` (adapters merged into the backbone)."""
    from llmx.engine.model import build_model

    sub = OmegaConf.merge(m, {"name_or_path": name_or_path})
    head = load_head(score_head_file(name_or_path))
    return ScoreModel(build_model(sub, tokenizer, seed), head)


def frozen(layer):
    """`layer` in eval mode with no gradients: a reference, reward model or any model that only scores."""
    layer.eval()
    for p in layer.parameters():
        p.stop_gradient = True
    return layer
