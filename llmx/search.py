"""Hyperparameter search over llmx's config with Optuna, behind the Hydra sweeper `hydra/sweeper=llmx_search`.

    python launch.py -m hydra/sweeper=llmx_search 'stage.train.lr=interval(1e-4,1e-2,log)' \\
        'stage.peft.lora_r=choice(8,16,32)' hydra.sweeper.n_trials=20

The search space comes from the sweep overrides, parsed by Hydra's own override parser:
`choice(...)` (and `a,b,c`), `range(...)` and `interval(a,b)`, log-scaled as `tag(log,interval(a,b))`
or `interval(a,b,log)`; any other override goes to every trial unchanged. Trials are asked from an
Optuna study, batch by batch (`n_jobs` at once), and run by whichever Hydra launcher is configured
(local, or llmx's Slurm launcher sizing each job by its layout); Hydra job number = Optuna trial number,
so trial N's run dir is `<sweep dir>/N`. The objective is a key of the job's summary (its return value,
or the job dir's summary.json); a job that fails or lacks it is a FAIL trial, and the search goes on.

The study lives in the sweep dir (`study.db`, SQLite), so the same command run again continues it: the
trials already there count towards n_trials and the next one gets the next number. Hydra's default sweep
dir holds a timestamp and would never be found again, so a search whose sweep dir has one runs in
`multirun/search/<stage>_<model>_<hash of the overrides>` instead (`hydra.sweep.dir=...` picks another).

A trial's training reports its held-out loss at each evaluation (`stage.train.eval_steps`) to its
trial in the study and stops when the pruner says so (llmx.engine.trial; each job learns where its trial
is from enter_trial, through the environment). Imports no paddle.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from llmx.errors import ConfigError

log = logging.getLogger("llmx")

STUDY_FILE = "study.db"
STUDY_NAME = "llmx_search"
SWEEPER = "LlmxSearchSweeper"  # (hydra_plugins/llmx_search/sweeper.py)
# Where a trial's training finds its trial (read by llmx.engine.trial, which the engine layer keeps to itself).
ENV_STORAGE, ENV_STUDY, ENV_TRIAL = "LLMX_SEARCH_STORAGE", "LLMX_SEARCH_STUDY", "LLMX_SEARCH_TRIAL"
DIRECTIONS = ("minimize", "maximize")
# Samplers by name; each needs what Optuna says (cmaes: the `cmaes` package; gp: torch and scipy; qmc: scipy).
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
            "gp": "GPSampler"}
NEEDS = {"cmaes": ("cmaes",), "qmc": ("scipy",), "gp": ("torch", "scipy")}  # Optuna imports them only when sampling
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
           "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
           "threshold": "ThresholdPruner"}
# Hydra's grammar takes `interval(a,b)` only; the issue's (and Optuna users') `interval(a,b,log)` is
# rewritten to Hydra's own spelling of the same thing before any parser sees it.
_LOG_INTERVAL = re.compile(r"^([^=]+=)\s*interval\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*,\s*log\s*\)\s*$")


def hydra_spelling(override: str) -> str:
    """`key=interval(a,b,log)` as Hydra spells it, `key=tag(log,interval(a,b))`; anything else unchanged."""
    m = _LOG_INTERVAL.match(override)
    return f"{m.group(1)}tag(log,interval({m.group(2)},{m.group(3)}))" if m else override


@dataclass
class SearchSettings:
    """hydra.sweeper.* (hydra_plugins/llmx_search holds the schema and its defaults)."""
    n_trials: int = 20
    n_jobs: int = 1
    objective: str = "eval_loss"
    direction: str = "minimize"
    sampler: str = "tpe"
    pruner: str = "median"
    seed: Optional[int] = None
    sampler_args: Optional[dict] = None
    pruner_args: Optional[dict] = None
    params: Optional[dict] = None

    def check(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials}: must be >= 1")
        if self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs={self.n_jobs}: must be >= 1 (trials run at once)")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={self.direction}: must be one of {', '.join(DIRECTIONS)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"hydra.sweeper.sampler={self.sampler}: must be one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"hydra.sweeper.pruner={self.pruner}: must be one of {', '.join(PRUNERS)}")


# --- the search space -------------------------------------------------------------------------------

def parse_space(arguments: Sequence[str]) -> tuple[dict, list[str]]:
    """({key: Optuna distribution}, plain overrides) of the sweep's overrides."""
    import optuna.distributions as od
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parser = OverridesParser.create()
    space, plain = {}, []
    for arg in arguments:
        try:
            override = parser.parse_override(hydra_spelling(arg))
        except Exception as error:  # noqa: BLE001 - Hydra's parse errors span several lines
            raise ConfigError(f"{arg}: not an override Hydra can parse ({str(error).splitlines()[0]})") from None
        key = override.get_key_element()
        if not override.is_sweep_override():
            plain.append(arg)  # as the user wrote it
            continue
        sweep = override.value()
        if getattr(sweep, "shuffle", False) or (sweep.tags - {"log"}):
            raise ConfigError(f"{arg}: a search takes choice(...), range(...), interval(a,b) and "
                              "tag(log,interval(a,b)) (or interval(a,b,log)); no shuffle or other tags")
        if "log" in sweep.tags and not isinstance(sweep, IntervalSweep):
            raise ConfigError(f"{arg}: `log` applies to interval(a,b) only")
        if isinstance(sweep, IntervalSweep):
            space[key] = _interval(arg, sweep, od)
        elif isinstance(sweep, RangeSweep):
            values = list(override.sweep_iterator())
            if not values:
                raise ConfigError(f"{arg}: the range holds no value")
            space[key] = od.CategoricalDistribution(values)
        elif isinstance(sweep, ChoiceSweep):
            # Values as Hydra would write them back, so that a trial's override composes like the user's.
            space[key] = od.CategoricalDistribution(list(override.sweep_string_iterator()))
        else:
            raise ConfigError(f"{arg}: a search takes choice(...), range(...) or interval(a,b)")
    return space, plain


def _interval(arg: str, sweep, od):
    low, high = sweep.start, sweep.end
    if not low < high:
        raise ConfigError(f"{arg}: interval(a,b) needs a < b")
    log_scale = "log" in sweep.tags
    if log_scale and low <= 0:
        raise ConfigError(f"{arg}: a log interval needs a > 0")
    # Hydra reads interval bounds as floats; integral bounds written as integers mean an integer parameter.
    bounds = arg.split("interval(", 1)[1]
    if all(re.fullmatch(r"\s*-?\d+\s*", b) for b in bounds.split(")")[0].split(",")[:2]):
        return od.IntDistribution(int(low), int(high), log=log_scale)
    return od.FloatDistribution(low, high, log=log_scale)


def trial_overrides(params: dict) -> list[str]:
    return [f"{key}={value}" for key, value in params.items()]


# --- the study --------------------------------------------------------------------------------------

def make_sampler(settings: SearchSettings, seed: int):
    import warnings

    import optuna

    missing = [m for m in NEEDS.get(settings.sampler, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"hydra.sweeper.sampler={settings.sampler} needs {' and '.join(missing)}: "
                          f"pip install {' '.join(missing)}, or choose another sampler ({', '.join(SAMPLERS)})")
    # Optuna marks some samplers experimental in a warning at every construction; llmx chose to offer them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs = {"seed": seed, **(settings.sampler_args or {})}
    return _build(getattr(optuna.samplers, SAMPLERS[settings.sampler]), kwargs, f"sampler={settings.sampler}")


def make_pruner(settings: SearchSettings):
    import optuna

    kwargs = dict(settings.pruner_args or {})
    return _build(getattr(optuna.pruners, PRUNERS[settings.pruner]), kwargs, f"pruner={settings.pruner}")


def _build(cls, kwargs: dict, what: str):
    try:
        return cls(**kwargs)
    except ImportError as error:
        raise ConfigError(f"hydra.sweeper.{what} needs a package that is not installed: {error} "
                          f"(pip install it, or choose another)") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"hydra.sweeper.{what} with {kwargs}: {str(error).splitlines()[0]}") from None


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def open_study(settings: SearchSettings, sweep_dir: Path, sampler, pruner):
    """The study in `sweep_dir`, created or (the same command again) continued."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # llmx says what happens, one line per trial
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage_url(sweep_dir), study_name=STUDY_NAME, load_if_exists=True,
                                direction=settings.direction, sampler=sampler, pruner=pruner)
    recorded = study.user_attrs.get("objective")
    if recorded not in (None, settings.objective) or study.direction.name.lower() != settings.direction:
        raise ConfigError(f"hydra.sweeper.objective/direction: the study in {sweep_dir} searches "
                          f"{study.direction.name.lower()} {recorded}; keep them, or choose another hydra.sweep.dir")
    study.set_user_attr("objective", settings.objective)
    # The trials' training asks the study whether to prune (llmx.engine.trial): the pruner is not stored
    # with the study, so its class and arguments are.
    study.set_user_attr("pruner", {"class": PRUNERS[settings.pruner], "args": dict(settings.pruner_args or {})})
    return study


def close_interrupted(study) -> None:
    """A trial still RUNNING when the search starts was cut off with its sweep (the process was killed):
    record it as failed, and ask for its parameters again next."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: its sweep ended before it did")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        log.info("search: trial %d was interrupted; it is recorded as failed and runs again", trial.number)


def stable_sweep_dir(config: DictConfig, arguments: Sequence[str]) -> Optional[str]:
    """A sweep dir the same command finds again, when the configured one holds a timestamp."""
    configured = OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"]
    if "${now:" not in str(configured):
        return None
    choices = config.hydra.runtime.choices
    digest = hashlib.sha1("\n".join(sorted(arguments)).encode()).hexdigest()[:8]
    return f"multirun/search/{choices.get('stage')}_{choices.get('model')}_{digest}"


def enter_trial(hydra_cfg) -> None:
    """In a job of a search (llmx.run), tell its training where its trial is: trial number = job number,
    the study in the sweep dir. Through the environment, which the ranks a job starts inherit."""
    if hydra_cfg.mode != RunMode.MULTIRUN or not str(hydra_cfg.sweeper.get("_target_", "")).endswith(SWEEPER):
        return
    os.environ.update({ENV_STORAGE: storage_url(Path(str(hydra_cfg.sweep.dir))), ENV_STUDY: STUDY_NAME,
                       ENV_TRIAL: str(hydra_cfg.job.num)})


def _quoted(value: str) -> str:
    """A Hydra override value quoted (paths may hold characters Hydra's grammar reads otherwise)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- the search -------------------------------------------------------------------------------------

class Search:
    """The sweeper's work (hydra_plugins/llmx_search is the Hydra plugin around it)."""

    def __init__(self, settings: SearchSettings, config: DictConfig, launcher, config_loader) -> None:
        settings.check()
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("hydra/sweeper=llmx_search needs Optuna: pip install 'llmx[search]'")
        self.settings, self.config, self.launcher, self.config_loader = settings, config, launcher, config_loader

    def run(self, arguments: Sequence[str]) -> list:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        s = self.settings
        params_conf = [f"{k}={v}" for k, v in (s.params or {}).items()]
        arguments = [hydra_spelling(a) for a in [*params_conf, *arguments]]
        space, plain = parse_space(arguments)
        if not space:
            raise ConfigError("hydra/sweeper=llmx_search: no search space; give a key e.g. "
                              "'stage.train.lr=interval(1e-4,1e-2,log)' or 'stage.peft.lora_r=choice(8,16)'")
        seed = s.seed if s.seed is not None else int(self.config.get("seed", 0))
        sampler, pruner = make_sampler(s, seed), make_pruner(s)  # (their errors before any file is written)
        sweep_dir = self._sweep_dir(arguments)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = open_study(s, sweep_dir, sampler, pruner)
        close_interrupted(study)
        done = len(study.trials) - len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        log.info("search: %s %s over %s; study %s (%d of %d trials done)", s.direction, s.objective,
                 ", ".join(space), sweep_dir / STUDY_FILE, done, s.n_trials)
        returns = []
        while done < s.n_trials:
            trials, batch = self._next_batch(study, space, plain, sweep_dir, min(s.n_jobs, s.n_trials - done))
            done += len(trials) - len(batch)
            if not batch:
                continue
            trials = trials[:len(batch)]
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            unmeasured = None
            for trial, result in zip(trials, results):
                job_dir = sweep_dir / str(trial.number)
                error = None
                if result.status == JobStatus.COMPLETED and isinstance(result.return_value, dict):
                    summary = result.return_value
                else:
                    summary = _read(job_dir / "summary.json")
                    error = result._return_value if result.status == JobStatus.FAILED else None
                if summary.get("pruned_at_step") is not None:
                    study.tell(trial, state=TrialState.PRUNED)
                    log.info("search: trial %d pruned at step %s", trial.number, summary["pruned_at_step"])
                    continue
                value = summary.get(s.objective)
                if isinstance(value, (int, float)):
                    study.tell(trial, float(value))
                    log.info("search: trial %d %s=%.6g (%s)", trial.number, s.objective, value,
                             " ".join(trial_overrides(trial.params)))
                    continue
                reason = _failure(job_dir, error, s.objective, summary)
                trial.set_user_attr("error", reason)
                study.tell(trial, state=TrialState.FAIL)
                log.info("search: trial %d failed: %s", trial.number, reason)
                unmeasured = unmeasured or (reason if summary else None)
            if unmeasured:  # a run that went well but lacks the objective: so will every other trial
                raise ConfigError(f"hydra.sweeper.objective={s.objective}: {unmeasured}")
            done += len(trials)
            returns.append(results)
        self._report(study)
        return returns

    def _next_batch(self, study, space: dict, plain: list[str], sweep_dir: Path, size: int):
        """Up to `size` new trials and their overrides. A trial whose config does not compose (say a
        choice of a group option that does not exist) is recorded as failed and ends the batch, as the
        launcher numbers a batch's jobs consecutively (job number = trial number)."""
        from optuna.trial import TrialState

        trials, batch = [], []
        while len(trials) < size:
            trial = study.ask(space)
            trials.append(trial)
            overrides = plain + trial_overrides(trial.params)
            trial.set_user_attr("overrides", overrides)
            try:
                self.config_loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides)
            except Exception as error:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors
                reason = str(error).strip().splitlines()[0]
                trial.set_user_attr("error", reason)
                study.tell(trial, state=TrialState.FAIL)
                log.info("search: trial %d failed: %s", trial.number, reason)
                break
            batch.append(overrides + self._trial_env(sweep_dir))
        return trials, batch

    def _sweep_dir(self, arguments: Sequence[str]) -> Path:
        stable = stable_sweep_dir(self.config, arguments)
        if stable is not None:
            # The launcher and the sweep's end read the sweep dir from this config; each trial composes its
            # own, so it also gets the dir as an override (_trial_env).
            with read_write(self.config), open_dict(self.config):
                self.config.hydra.sweep.dir = stable
        path = Path(str(self.config.hydra.sweep.dir))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _trial_env(self, sweep_dir: Path) -> list[str]:
        return [f"hydra.sweep.dir={_quoted(str(sweep_dir))}"]  # (see _sweep_dir)

    def _report(self, study) -> None:
        from optuna.trial import TrialState

        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):  # (none: llmx.sweep says so)
            best = study.best_trial
            log.info("search: best trial %d %s=%.6g: %s", best.number, self.settings.objective, best.value,
                     best_command(best.user_attrs.get("overrides", [])))


def best_command(overrides: Sequence[str]) -> str:
    return "python launch.py " + " ".join(shlex.quote(o) for o in overrides)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _failure(job_dir: Path, error: Any, objective: str, summary: dict) -> str:
    status = _read(job_dir / "status.json")
    if status.get("error"):
        return status["error"]
    if error is not None:
        return f"{type(error).__name__}: {str(error).splitlines()[-1] if str(error) else ''}"
    if summary:
        return f"the run's summary has no {objective} (it has {', '.join(sorted(summary))})"
    return "no summary (see its llmx.log)"


# --- the table (llmx.sweep writes sweep.md / sweep.csv) ----------------------------------------------

def study_rows(sweep_dir: Path) -> Optional[tuple[list[dict], list[str], str]]:
    """(rows best first, columns, last line) of the study in `sweep_dir`; None when it holds none."""
    if not (sweep_dir / STUDY_FILE).is_file():
        return None
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(sweep_dir))
    except KeyError:
        return None
    objective = study.user_attrs.get("objective", "value")
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2}
    sign = 1 if study.direction.name == "MINIMIZE" else -1
    trials = [t for t in study.trials if t.state in order]
    trials.sort(key=lambda t: (order[t.state], sign * t.value if t.value is not None else 0, t.number))
    names = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else "")
        row = {"trial": t.number, objective: value, "state": t.state.name}
        row.update({k: t.params.get(k, "") for k in names})
        row["error"] = t.user_attrs.get("error", "")
        rows.append(row)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    last = (f"Best: trial {complete[0].number} ({objective} {complete[0].value:.6g}):\n\n    "
            f"{best_command(complete[0].user_attrs.get('overrides', []))}") if complete else "No trial completed."
    return rows, ["trial", objective, "state", *names, "error"], last
