"""The run schema and its validation, paddle-free: one module per config block, beside its validator.

    checks      fail / require / one_of / positive / existing: the one-line ConfigErrors (`key=value: allowed`)
    paths       PACKAGE_DIR, ASSETS_DIR, CONF_DIR, asset_path
    run         RunConfig (every group a run has), validate_common, check_known_keys
    model       ModelConfig, validate_model, model_hparams (a checkpoint's config read without converting it)
    parallel    ParallelConfig, validate_parallel: the layouts a model and a device can run
    quant       QuantConfig and its algorithms (stage=quantize applies them)
    data        DataFiles (a stage's `data` block), the format names each kind of data takes, check_data_config
    train       TrainConfig, validate_train, validate_trainable, and validate_training: the one entry of every
                stage that fine-tunes on examples (trainable model + data block + training loop + adapters)
    peft        PeftConfig, validate_peft, reft_positions, the methods and LoRA variants
    preference  validate_pairs (dpo, kto, rm) and validate_preference (dpo, kto)
    logger      LoggerConfig (the `logger` group: the chosen experiment trackers), validate_logger: their packages

Hydra + OmegaConf check key names and types while composing; these check values and combinations, with
one-line errors naming the key, the bad value and what is allowed. Each stage module holds its own `Config`
(built from these blocks) and `validate` (starting from these validators); llmx.stages registers the
schemas in Hydra's ConfigStore and validates a whole run. This package sits at the ground with
llmx.families and llmx.layout: it imports no data reader, no engine and no paddle, and reads a Hugging
Face directory or a GGUF file through llmx.sources without converting it.
"""
from llmx.schema.checks import existing, fail, one_of, positive, require
from llmx.schema.data import FORMATS, KINDS, DataFiles, check_data_config, check_format, check_weights, data_paths
from llmx.schema.logger import LoggerConfig, chosen_trackers, validate_logger
from llmx.schema.model import (DTYPES, FUSED_OPS, ModelConfig, model_dim, model_family, model_hparams, quantized,
                               validate_model)
from llmx.schema.parallel import ParallelConfig, launched_processes, on_cpu, validate_parallel
from llmx.schema.paths import ASSETS_DIR, CONF_DIR, PACKAGE_DIR, asset_path
from llmx.schema.peft import LORA_VARIANTS, MERGEABLE_METHODS, PEFT_METHODS, PeftConfig, reft_positions, validate_peft
from llmx.schema.preference import validate_pairs, validate_preference
from llmx.schema.quant import QUANT_ALGORITHMS, QuantConfig, validate_quant
from llmx.schema.run import DEVICES, RunConfig, check_known_keys, validate_common
from llmx.schema.train import LR_SCHEDULERS, TrainConfig, validate_train, validate_trainable, validate_training

__all__ = [
    "existing", "fail", "one_of", "positive", "require",
    "FORMATS", "KINDS", "DataFiles", "check_data_config", "check_format", "check_weights", "data_paths",
    "LoggerConfig", "chosen_trackers", "validate_logger",
    "DTYPES", "FUSED_OPS", "ModelConfig", "model_dim", "model_family", "model_hparams", "quantized", "validate_model",
    "ParallelConfig", "launched_processes", "on_cpu", "validate_parallel",
    "ASSETS_DIR", "CONF_DIR", "PACKAGE_DIR", "asset_path",
    "LORA_VARIANTS", "MERGEABLE_METHODS", "PEFT_METHODS", "PeftConfig", "reft_positions", "validate_peft",
    "validate_pairs", "validate_preference",
    "QUANT_ALGORITHMS", "QuantConfig", "validate_quant",
    "DEVICES", "RunConfig", "check_known_keys", "validate_common",
    "LR_SCHEDULERS", "TrainConfig", "validate_train", "validate_trainable", "validate_training",
]
