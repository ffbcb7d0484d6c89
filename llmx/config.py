"""Deprecated: import from llmx.schema (the run schema and its validation, one module per config block).

Every name this module held before is re-exported here, so outside code keeps working."""
from llmx.errors import ConfigError, DataError, UserError
from llmx.schema import (ASSETS_DIR, CONF_DIR, DEVICES, DTYPES, FUSED_OPS, LORA_VARIANTS, LR_SCHEDULERS,
                         MERGEABLE_METHODS, PACKAGE_DIR, PEFT_METHODS, QUANT_ALGORITHMS, DataFiles, ModelConfig,
                         ParallelConfig, PeftConfig, QuantConfig, RunConfig, TrainConfig, asset_path,
                         check_data_config, check_known_keys, existing, fail, launched_processes, model_family,
                         model_hparams, on_cpu, one_of, positive, quantized, reft_positions, require, validate_common,
                         validate_model, validate_pairs, validate_parallel, validate_peft, validate_preference,
                         validate_train, validate_trainable)
from llmx.schema.model import model_dim as _model_dim
from llmx.schema.model import resolve_source

__all__ = ["ConfigError", "DataError", "UserError", "ASSETS_DIR", "CONF_DIR", "DEVICES", "DTYPES", "FUSED_OPS",
           "LORA_VARIANTS", "LR_SCHEDULERS", "MERGEABLE_METHODS", "PACKAGE_DIR", "PEFT_METHODS", "QUANT_ALGORITHMS",
           "DataFiles", "ModelConfig", "ParallelConfig", "PeftConfig", "QuantConfig", "RunConfig", "TrainConfig",
           "asset_path", "check_data_config", "check_known_keys", "existing", "fail", "launched_processes",
           "model_family", "model_hparams", "on_cpu", "one_of", "positive", "quantized", "reft_positions", "require",
           "validate_common", "validate_model", "validate_pairs", "validate_parallel", "validate_peft",
           "validate_preference", "validate_train", "validate_trainable", "_model_dim", "resolve_source"]
