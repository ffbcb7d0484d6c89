"""The run schema (every group a run has) and the checks of what every run has, whatever its stage."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from llmx.schema.checks import fail, one_of, require
from llmx.schema.logger import LoggerConfig, validate_logger
from llmx.schema.model import ModelConfig, validate_model
from llmx.schema.parallel import ParallelConfig, validate_parallel
from llmx.schema.quant import QuantConfig, validate_quant

DEVICES = ("auto", "cpu", "gpu")


@dataclass
class RuntimeConfig:
    # Math threads per rank on CPU: "auto" = the cores this process may use / the ranks on its node
    # (llmx.devices.math_threads), or a number.
    threads: Any = "auto"


@dataclass
class RunConfig:
    # A default (not MISSING) so that llmx.stages.register_configs can mark `model.overrides` open for new keys.
    model: ModelConfig = field(default_factory=ModelConfig)
    stage: Any = MISSING  # each stage file picks its schema (`/schema/stage/<runner>`) in its defaults list
    parallel: ParallelConfig = MISSING
    quant: QuantConfig = MISSING
    seed: int = 42
    device: str = "auto"  # auto | cpu | gpu
    verbose: bool = False  # also show PaddleNLP's logs and library warnings on the console (llmx.log has them anyway)
    plan: bool = False  # only print the per-device memory estimate of this layout (llmx.plan), run nothing
    device_memory_gb: Optional[float] = None  # memory of one device in GiB, for the plan's fits verdict
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # the chosen trackers (llmx.tracking)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def validate_common(cfg: DictConfig) -> None:
    """Check the values and combinations of what every run has (llmx.stages.validate adds the
    stage's own rules); raise ConfigError with one line on the first problem."""
    check_known_keys(cfg, "")
    if cfg.model.name_or_path:  # an HF checkpoint of another family: one line, before it is converted
        from llmx.convert.cache import check_hf_family

        check_hf_family(cfg)
    validate_model(cfg.model)
    validate_parallel(cfg)
    validate_quant(cfg)
    validate_logger(cfg)
    one_of("device", cfg.device, DEVICES)
    threads = cfg.runtime.threads
    require(threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1),
            "runtime.threads", threads, "allowed: auto, or a number of threads >= 1")
    require(cfg.device_memory_gb is None or cfg.device_memory_gb > 0, "device_memory_gb", cfg.device_memory_gb,
            "must be > 0 (GiB)")
    require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")


def check_known_keys(node: DictConfig, prefix: str) -> None:
    """`+key=value` adds keys past the schemas' struct check; a key no schema declares is a typo."""
    schema = OmegaConf.get_type(node)
    names = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if names is not None and key not in names:
            value = node[key]
            fail(f"{prefix}{key}", OmegaConf.to_container(value) if isinstance(value, DictConfig) else value,
                 f"unknown key (allowed here: {', '.join(names)})")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and names is not None:  # free-form dicts (sizes, overrides) take any key
            check_known_keys(child, f"{prefix}{key}.")
