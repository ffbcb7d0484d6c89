"""The `logger` group: which experiment trackers receive a run's metrics, and their settings.

Each file of conf/logger/ sets its own key under `logger`, so several merge (`logger=[visualdl,mlflow]`);
a tracker is chosen when its key is present. The trackers themselves are llmx.tracking's; this module only
checks the choice, paddle-free and without importing any tracker package.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from llmx.schema.checks import fail, one_of

# tracker -> (the modules it needs, the pip extra of llmx that installs them). MLflow's default store is a
# SQLite file (MLflow 3 refuses a new file store unless told to): mlflow-skinny writes it with SQLAlchemy.
TRACKER_PACKAGES = {
    "visualdl": (("visualdl",), "visualdl"),
    "tensorboard": (("tensorboardX",), "tensorboard"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
    "wandb": (("wandb",), "wandb"),
    "swanlab": (("swanlab",), "swanlab"),
}
WANDB_MODES = ("offline", "online", "disabled")
SWANLAB_MODES = ("offline", "local", "online")


@dataclass
class VisualDLConfig:
    logdir: Optional[str] = None  # default: <run dir>/visualdl


@dataclass
class TensorBoardConfig:
    logdir: Optional[str] = None  # default: <run dir>/tensorboard


@dataclass
class MLflowConfig:
    # default: sqlite:///<sweep dir of a multirun, else run dir>/mlflow.db (a sweep's jobs: one experiment)
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None  # default: the sweep dir (a multirun), else "llmx"


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "llmx"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the sweep dir (a multirun)


@dataclass
class SwanLabConfig:
    mode: str = "offline"  # offline | local (needs swanlab[dashboard], for `swanlab watch`) | online
    project: str = "llmx"
    workspace: Optional[str] = None
    group: Optional[str] = None  # default: the sweep dir (a multirun)


@dataclass
class LoggerConfig:
    """The chosen trackers: a key present (not None) is one chosen."""
    visualdl: Optional[VisualDLConfig] = None
    tensorboard: Optional[TensorBoardConfig] = None
    mlflow: Optional[MLflowConfig] = None
    wandb: Optional[WandbConfig] = None
    swanlab: Optional[SwanLabConfig] = None


def chosen_trackers(cfg: DictConfig) -> list[str]:
    """The trackers a run's config chooses, in a fixed order."""
    block = OmegaConf.select(cfg, "logger")
    return [name for name in TRACKER_PACKAGES if block is not None and block.get(name) is not None]


def missing_package(module: str) -> bool:
    """Is `module` not importable? (found without importing it: a tracker package takes seconds to import)"""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or a module entry set to None
        return True


def validate_logger(cfg: DictConfig) -> None:
    for name in chosen_trackers(cfg):
        modules, extra = TRACKER_PACKAGES[name]
        missing = [m for m in modules if missing_package(m)]
        if missing:
            fail("logger", name, f'needs the {missing[0]} package: pip install "llmx[{extra}]"')
    if "wandb" in chosen_trackers(cfg):
        one_of("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    if "swanlab" in chosen_trackers(cfg):
        one_of("logger.swanlab.mode", cfg.logger.swanlab.mode, SWANLAB_MODES)
        if cfg.logger.swanlab.mode == "local" and missing_package("swanboard"):
            fail("logger.swanlab.mode", "local", 'needs SwanLab\'s dashboard: pip install "swanlab[dashboard]" '
                 "(or mode offline, the default)")
