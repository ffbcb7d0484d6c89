"""The `quant` group: post-training quantization settings, and the rule that only stage=quantize applies them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig

from llmx.schema.checks import one_of, require

QUANT_ALGORITHMS = ("none", "wint8", "wint4", "gptq", "awq", "a8w8", "a8w8c8", "fp8")


@dataclass
class QuantConfig:
    """Post-training quantization (stage=quantize; the algorithms are llmx.quant's)."""
    algorithm: str = "none"  # none | wint8 | wint4 | gptq | awq | a8w8 | a8w8c8 | fp8
    bits: Optional[int] = None  # informational: the algorithm fixes the format (int8, int4, e4m3)
    group_size: int = -1  # -1: one scale per output channel; else rows per scale group (64, 128)
    calib_path: Optional[str] = None  # SFT examples for calibration, any format (default: the bundled demo data)
    calib_samples: int = 128
    damp: float = 0.01  # gptq: damping, a fraction of the mean Hessian diagonal
    act_order: bool = False  # gptq: rows in decreasing Hessian-diagonal order (static groups)
    grid: int = 20  # awq: scale exponents tried in [0, 1]
    clip: bool = False  # awq: also search a clipping ratio
    smooth: bool = True  # a8w8: SmoothQuant migration (false: naive W8A8)
    alphas: List[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    per_channel: bool = True  # fp8: weight scales per output channel (false: per tensor)
    include_head: bool = False  # also quantize the LM head (embeddings and norms always stay float)


def validate_quant(cfg: DictConfig) -> None:
    one_of("quant.algorithm", cfg.quant.algorithm, QUANT_ALGORITHMS)
    # Training on a quantized base (QLoRA-style) needs quantized-weight kernels with gradients: not on CPU here.
    require(cfg.quant.algorithm == "none" or cfg.stage.runner == "quantize", "quant.algorithm", cfg.quant.algorithm,
            "only stage=quantize applies a quant config; to train on a quantized model, train the float "
            "model and quantize the result (QLoRA-style training on a quantized base is not supported)")
