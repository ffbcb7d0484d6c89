"""The Hydra plugin of `hydra/sweeper=llmx_search`: its config schema (hydra.sweeper.*) and a thin Sweeper
over llmx.search, where the search itself lives.

Hydra imports every module of the `hydra_plugins` namespace at start-up, whatever runs, so this one imports
only Hydra; Optuna and llmx come when a search starts. (Hydra's own hydra-optuna-sweeper pins optuna<3.)
"""
# No `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, where
# dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class LlmxSearchConf:
    _target_: str = "hydra_plugins.llmx_search.sweeper.LlmxSearchSweeper"
    n_trials: int = 20  # trials in the study, counting those a previous launch of the same command ran
    n_jobs: int = 1  # trials launched at once (one batch)
    objective: str = "eval_loss"  # a key of the run's summary.json
    direction: str = "minimize"  # minimize | maximize
    sampler: str = "tpe"  # tpe | random | cmaes | qmc | gp
    pruner: str = "median"  # none | median | percentile | hyperband | successive_halving | threshold
    seed: Optional[int] = None  # the sampler's seed; default: the run's `seed`
    sampler_args: Dict[str, Any] = field(default_factory=dict)  # more keyword arguments of Optuna's sampler
    pruner_args: Dict[str, Any] = field(default_factory=dict)  # ... and of its pruner (e.g. n_startup_trials)
    params: Dict[str, str] = field(default_factory=dict)  # search space in a config file: {key: "interval(a,b)"}


ConfigStore.instance().store(group="hydra/sweeper", name="llmx_search", node=LlmxSearchConf, provider="llmx")


class LlmxSearchSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.search: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins
        from omegaconf import OmegaConf

        from llmx.search import Search, SearchSettings

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        settings = {k: OmegaConf.to_container(v) if isinstance(v, DictConfig) else v for k, v in self.settings.items()}
        self.search = Search(SearchSettings(**settings), config, self.launcher, hydra_context.config_loader)

    def sweep(self, arguments: List[str]) -> Optional[List[Any]]:
        return self.search.run(arguments)
