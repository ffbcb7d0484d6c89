"""The `logger` group without paddle: composing several trackers, the one-line refusals (a tracker package
missing, an unknown tracker or mode), and the hints of what a run wrote."""
from __future__ import annotations

import sys

import pytest
from helpers import compose, config_error, input_error
from omegaconf import OmegaConf

from llmx.schema.logger import LoggerConfig, MLflowConfig, VisualDLConfig, chosen_trackers


def test_visualdl_by_default_and_several_trackers_merge_into_one_logger_block():
    assert chosen_trackers(compose()) == ["visualdl"]
    cfg = compose("logger=[visualdl,mlflow]", "logger.mlflow.tracking_uri=http://127.0.0.1:5000")
    assert chosen_trackers(cfg) == ["visualdl", "mlflow"]
    assert OmegaConf.get_type(cfg.logger) is LoggerConfig
    assert OmegaConf.get_type(cfg.logger.visualdl) is VisualDLConfig and OmegaConf.get_type(cfg.logger.mlflow) is MLflowConfig
    assert OmegaConf.to_container(cfg.logger) == {
        "visualdl": {"logdir": None}, "tensorboard": None, "wandb": None, "swanlab": None,
        "mlflow": {"tracking_uri": "http://127.0.0.1:5000", "experiment": None}}
    assert chosen_trackers(compose("logger=[]")) == []


def test_a_missing_tracker_package_fails_in_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python does for a module that cannot be imported
    with pytest.raises(ImportError):
        __import__("mlflow")  # the simulation is real: the import fails
    assert input_error("logger=[visualdl,mlflow]") == \
        "llmx: config error: logger='mlflow': needs the mlflow package: pip install \"llmx[mlflow]\""


def test_an_unknown_tracker_or_mode_is_refused_in_one_line(tmp_path):
    line = config_error("logger=neptune", tmp_path=tmp_path)
    assert line == ("llmx: config error: In 'config': Could not find 'logger/neptune' "
                    "(available: mlflow, swanlab, tensorboard, visualdl, wandb)")
    # in a list Hydra names the missing option only (its MissingConfigException carries no options there)
    assert input_error("logger=[visualdl,neptune]") == "llmx: config error: In 'config': Could not load 'logger/neptune'."
    assert input_error("logger=wandb", "logger.wandb.mode=cloud") == \
        "llmx: config error: logger.wandb.mode='cloud': allowed: offline, online, disabled"


def test_hints_name_only_what_was_written(tmp_path, monkeypatch):
    """A stage that logs no curve (infer, convert, ...) gets no `visualdl --logdir` line."""
    from llmx.tracking import hints

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose("logger=[visualdl,tensorboard]"), run / ".hydra" / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert hints(run) == []
    (run / "visualdl").mkdir()
    (run / "visualdl" / "vdlrecords.1.log").write_bytes(b"x")
    assert hints(run) == ["curves:  visualdl --logdir run"]

