"""DPO's loss types and the rules that follow from them, written once for the stage's validation and the
algorithm (paddle-free).

The names users type map to trl's (`orpo` is trl's "or"). SimPO and ORPO are reference-free by
construction; trl's DPOTrainer refuses reference_free for the losses that compare against the reference.
Each loss is defined as in Hugging Face TRL (the paper where TRL has none: DPOP); PaddleNLP's trl
defines two of them otherwise, which `loss_definition=paddlenlp` keeps (llmx.align.losses).
"""
from __future__ import annotations

LOSS_TYPES = {"sigmoid": "sigmoid", "ipo": "ipo", "hinge": "hinge", "kto_pair": "kto_pair", "sppo_hard": "sppo_hard",
              "nca_pair": "nca_pair", "dpop": "dpop", "orpo": "or", "simpo": "simpo"}
NO_REFERENCE = ("simpo", "orpo")
NEED_REFERENCE = ("kto_pair", "sppo_hard", "nca_pair", "dpop")
SMOOTHS_LABELS = ("sigmoid", "simpo")  # the losses with label_smoothing (cDPO)
LOSS_DEFINITIONS = ("trl", "paddlenlp")  # whose definitions of the losses: TRL's (and the papers') or PaddleNLP's
PADDLENLP_DIFFERS = ("orpo", "dpop")  # the losses PaddleNLP 3.0.0b4 defines otherwise than TRL / the paper


def reference_free(stage) -> bool:
    """SimPO and ORPO have no reference model; the rest have one unless the user turns it off."""
    if stage.reference_free is not None:
        return bool(stage.reference_free)
    return stage.loss_type in NO_REFERENCE


def effective_sft_ratio(stage) -> float:
    """ORPO is its odds-ratio term plus the chosen response's NLL (weight 1 unless set)."""
    if stage.sft_loss_ratio is not None:
        return float(stage.sft_loss_ratio)
    return 1.0 if stage.loss_type == "orpo" else 0.0
