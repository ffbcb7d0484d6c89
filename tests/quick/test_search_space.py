"""hydra/sweeper=llmx_search without running a trial: the plugin is found, the search space is read from the
overrides by Hydra's parser (with the issue's interval(a,b,log)), and bad settings fail in one line."""
from __future__ import annotations

import pytest
from helpers import config_error
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from llmx.errors import ConfigError
from llmx.search import SearchSettings, hydra_spelling, parse_space, stable_sweep_dir


def test_hydra_finds_the_plugin_and_its_config():
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    assert "LlmxSearchSweeper" in [c.__name__ for c in Plugins.instance().discover(Sweeper)]
    assert "llmx_search.yaml" in ConfigStore.instance().list("hydra/sweeper")


def test_space_from_overrides():
    space, plain = parse_space(["stage.train.lr=interval(1e-4,1e-2,log)", "stage.peft.lora_r=choice(8,16,32)",
                                "stage.train.warmup_steps=range(0,6,2)", "stage.train.grad_accum=interval(1,4)",
                                "stage.train.weight_decay=tag(log,interval(1e-3,1e-1))", "parallel=single,dp2",
                                "stage=lora", "stage.train.max_steps=4"])
    assert space == {
        "stage.train.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "stage.peft.lora_r": CategoricalDistribution(["8", "16", "32"]),
        "stage.train.warmup_steps": CategoricalDistribution([0, 2, 4]),
        "stage.train.grad_accum": IntDistribution(1, 4),
        "stage.train.weight_decay": FloatDistribution(1e-3, 1e-1, log=True),
        "parallel": CategoricalDistribution(["single", "dp2"]),
    }
    assert plain == ["stage=lora", "stage.train.max_steps=4"]


def test_issue_spelling_of_a_log_interval():
    """Hydra's grammar has no third argument to interval(); the issue's form becomes Hydra's tagged one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match="too many positional arguments"):
        OverridesParser.create().parse_override("a=interval(1e-4,1e-2,log)")
    assert hydra_spelling("a=interval(1e-4, 1e-2, log)") == "a=tag(log,interval(1e-4,1e-2))"
    assert hydra_spelling("a=interval(1,2)") == "a=interval(1,2)"


@pytest.mark.parametrize("override, message", [
    ("a=shuffle(1,2)", "no shuffle or other tags"),
    ("a=tag(log,choice(1,2))", "`log` applies to interval(a,b) only"),
    ("a=interval(0,1,log)", "a log interval needs a > 0"),
    ("a=interval(2,1)", "needs a < b"),
    ("a=interval(1,2", "not an override Hydra can parse"),
])
def test_bad_space_is_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        parse_space([override])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("settings, message", [
    ({"sampler": "grid"}, "hydra.sweeper.sampler=grid: must be one of tpe, random, cmaes, qmc, gp"),
    ({"pruner": "early"}, "hydra.sweeper.pruner=early: must be one of none, median, percentile, hyperband"),
    ({"direction": "down"}, "hydra.sweeper.direction=down: must be one of minimize, maximize"),
    ({"n_trials": 0}, "hydra.sweeper.n_trials=0: must be >= 1"),
])
def test_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        SearchSettings(**settings).check()


def test_same_command_same_sweep_dir():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": "multirun/${now:%H-%M-%S}"},
                                      "runtime": {"choices": {"stage": "lora", "model": "tiny"}}}})
    a = stable_sweep_dir(cfg, ["stage.train.lr=interval(1,2)", "seed=1"])
    assert a == stable_sweep_dir(cfg, ["seed=1", "stage.train.lr=interval(1,2)"]) and a.startswith("multirun/search/lora_tiny_")
    assert a != stable_sweep_dir(cfg, ["stage.train.lr=interval(1,3)", "seed=1"])
    cfg.hydra.sweep.dir = "sweeps/mine"
    assert stable_sweep_dir(cfg, ["seed=1"]) is None  # a dir without a timestamp is used as it is


def test_cli_errors_before_any_trial(tmp_path):
    search = ["hydra/sweeper=llmx_search", "stage=lora"]
    assert config_error(*search, "stage.train.lr=interval(0,1,log)", tmp_path=tmp_path, multirun=True) == \
        "llmx: config error: stage.train.lr=tag(log,interval(0,1)): a log interval needs a > 0"
    assert config_error(*search, "stage.train.lr=interval(1e-4,1e-2)", "+hydra.sweeper.pruner_args.bogus=1",
                        tmp_path=tmp_path, multirun=True).startswith(
        "llmx: config error: hydra.sweeper.pruner=median with {'bogus': 1}: ")
    assert config_error(*search, "stage.train.max_steps=4", tmp_path=tmp_path, multirun=True) == (
        "llmx: config error: hydra/sweeper=llmx_search: no search space; give a key e.g. "
        "'stage.train.lr=interval(1e-4,1e-2,log)' or 'stage.peft.lora_r=choice(8,16)'")
    assert not (tmp_path / "sweep" / "0").exists()
