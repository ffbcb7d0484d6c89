"""The `model` group follows the checkpoint (paddle-free).

A checkpoint names its family (llmx.sources.family_of: a model, run, adapter or Hugging Face
directory), so `model=` is optional once `model.name_or_path` is given:

- left at its default, the model group is selected for the checkpoint's family, exactly as if
  `model=<family>` had been typed; the override is recorded as one (`.hydra/overrides.yaml`,
  `hydra.runtime.choices`, hence the run directory's name), so `--cfg job`, `plan` and `rerun`
  show and replay what ran;
- typed (`model=X` or `model.family=X`) and naming a family whose PaddleNLP class differs from the
  checkpoint's, composition stops with one line, before a run directory or paddle.

Hydra has no hook between composing a config and using it, and a defaults list cannot read a
config value, so `install()` wraps ConfigLoaderImpl.load_configuration: the one function behind
launch.py's run, `--cfg`, every multirun job and the compose API (plan, tests). llmx.cli wraps
Hydra's error reporting the same way.
"""
from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from llmx.schema import CONF_DIR
from llmx.errors import ConfigError

_WRAPPED = "_llmx_follows_checkpoint"


def install() -> None:
    """Wrap Hydra's config loader (idempotent)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    load = ConfigLoaderImpl.load_configuration
    if getattr(load, _WRAPPED, False):
        return

    def load_configuration(self, config_name, overrides, run_mode, *args: Any, **kwargs: Any) -> DictConfig:
        cfg = load(self, config_name, overrides, run_mode, *args, **kwargs)
        extra = model_override(cfg)
        if extra is None:
            return cfg
        return load(self, config_name, [*overrides, extra], run_mode, *args, **kwargs)

    setattr(load_configuration, _WRAPPED, True)
    ConfigLoaderImpl.load_configuration = load_configuration


def model_override(cfg: DictConfig) -> Optional[str]:
    """`model=<family>` where the composed `cfg` should follow its checkpoint's family, None where it
    already does (or names no checkpoint); a ConfigError where the user's own model= contradicts it."""
    from llmx.families import share_weights
    from llmx.sources import family_of

    path = _select(cfg, "model.name_or_path")
    if not isinstance(path, str) or not path:
        return None
    found = family_of(path)
    chosen = _select(cfg, "model.family")
    # the default group `tiny` is a Llama too: a Llama checkpoint still gets model=llama, so the run is named
    # after what it runs (outputs/<stage>/llama/...), not after the bundled toy model
    default = _select(cfg, "hydra.runtime.choices.model") == "tiny"
    if found is None or (found == chosen and not default):
        return None
    typed = _typed_model(cfg)
    if typed is None:
        return f"model={found}" if (CONF_DIR / "model" / f"{found}.yaml").is_file() else None
    if typed == "sweep" or share_weights(chosen, found):
        return None  # a sweep is checked job by job; Llama and Baichuan load each other's weights
    named = typed if typed.startswith("model.family=") else f"{typed} (model.family={chosen})"
    raise ConfigError(f"{named}: {path} holds a {found} model; "
                      f"leave model= out to follow the checkpoint, or use model={found}")


def _typed_model(cfg: DictConfig) -> Optional[str]:
    """The user's `model=X` / `model.family=X` override as typed, "sweep" for a sweep over them, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = list(_select(cfg, "hydra.overrides.task") or [])
    typed = None
    for override in OverridesParser.create().parse_overrides(lines):
        if override.key_or_group in ("model", "model.family") and not override.is_delete():
            if override.is_sweep_override():
                return "sweep"
            typed = override.input_line.lstrip("+")
    return typed


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 - an unresolvable value (a sweep, a run-time resolver): nothing to follow
        return None
