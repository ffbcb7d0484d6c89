"""Experiment trackers: every metrics.jsonl line of a run, sent on to the trackers the `logger` group chose.

llmx.experiment.Experiment.log_metrics is the one funnel: each record it appends to metrics.jsonl goes to
every open tracker at its own step (training steps, held-out metrics at step 0 and at the end, the RL loop's
steps). A tracker also gets the run's resolved config, flattened to `a.b.c` keys, when it opens, and the
summary when the run ends; it is closed when the run ends, failed runs included (marked failed where the
tracker keeps a status). Only the main process opens trackers.

One class per tracker, each written on the tracker's own package, imported only when that tracker is chosen
(llmx.schema.logger checked beforehand that the package is there). Imports no paddle.

Where the files go: VisualDL and TensorBoard in the run dir (a sweep dir opened in either shows its jobs as
runs); MLflow's SQLite store, wandb's offline runs and SwanLab's log in the sweep dir of a multirun (else the
run dir), so that a sweep's jobs are one MLflow experiment, one wandb group, one SwanLab group.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

SWEEP_FILE = "multirun.yaml"  # Hydra writes it into a sweep dir before the sweep's first job starts
SUMMARY_PREFIX = "summary/"  # the summary's numbers, as single points where a tracker has no summary of its own


@dataclass(frozen=True)
class Placement:
    """Where one run's trackers write, and the names they show it under."""
    run_dir: Path
    root: Path  # the sweep dir of a multirun job, else the run dir
    group: Optional[str]  # the sweep, as the trackers group its jobs; None outside a sweep
    name: str  # the run, as the trackers show it

    @classmethod
    def of(cls, run_dir: str | Path, sweep: bool = False) -> "Placement":
        """`sweep`: the job of a multirun (Hydra's mode); else found from the files Hydra wrote, as for a rank
        that a multi-process job launched (its own Hydra runs it as a single run) or a finished run."""
        run_dir = Path(run_dir).resolve()
        sweep = sweep or _in_sweep(run_dir)
        root = run_dir.parent if sweep else run_dir  # (the sweep's subdir pattern is one level: the job number)
        return cls(run_dir, root, _shown(root) if sweep else None,
                   f"{_shown(root)}/{run_dir.name}" if sweep else _shown(run_dir))

    def location(self, tracker: str, settings: dict) -> str:
        """The directory (or MLflow tracking URI) `tracker` writes to."""
        if tracker in ("visualdl", "tensorboard"):
            return settings.get("logdir") or str(self.run_dir / tracker)
        if tracker == "mlflow":
            return settings.get("tracking_uri") or f"sqlite:///{self.root / 'mlflow.db'}"
        return str(self.root / "swanlog") if tracker == "swanlab" else str(self.root)  # wandb adds wandb/


def _in_sweep(run_dir: Path) -> bool:
    if (run_dir.parent / SWEEP_FILE).is_file():  # Hydra's basic sweeper writes it before the first job
        return True
    record = run_dir / ".hydra" / "hydra.yaml"
    if not record.is_file():
        return False
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(record), "hydra.mode") == "MULTIRUN"


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to the working directory where it lies below it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def flat_params(config: dict, prefix: str = "") -> dict[str, Any]:
    """A resolved config as `a.b.c` keys with scalar values (lists as JSON), as trackers take parameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def scalars(record: dict) -> dict[str, float]:
    """A record's numbers, `step` aside (None, text and flags are no curve)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@contextlib.contextmanager
def _quiet():
    """Trackers announce themselves on stdout; into llmx.log with that, not onto llmx's console."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        log.debug("%s", buffer.getvalue().strip())


def _into_llmx_log(name: str) -> None:
    """A library logger with a console handler of its own (MLflow's): its records go to the root logger instead,
    so into llmx.log and, through llmx.console's filter, not onto the console."""
    library = logging.getLogger(name)
    for handler in list(library.handlers):
        library.removeHandler(handler)
    library.propagate = True


class VisualDL:
    """Opens its log at the first curve: a stage that logs none (infer, convert, ...) leaves no folder."""

    def __init__(self, settings: dict, where: Placement, params: dict) -> None:
        self.logdir, self.writer = where.location("visualdl", settings), None

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=self.logdir)
        for tag, value in values.items():
            self.writer.add_scalar(tag=tag, value=value, step=step)

    def summary(self, step: int, values: dict[str, float], summary: dict) -> None:
        if self.writer is not None:
            self.log(step, {SUMMARY_PREFIX + k: v for k, v in values.items()})

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class TensorBoard:
    """tensorboardX: TensorBoard's event files without TensorFlow or torch. Opens at the first curve, as VisualDL."""

    def __init__(self, settings: dict, where: Placement, params: dict) -> None:
        self.logdir, self.writer = where.location("tensorboard", settings), None
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=self.logdir)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def summary(self, step: int, values: dict[str, float], summary: dict) -> None:
        """The summary's numbers as scalars, and the config with them in TensorBoard's HParams tab
        (written into this run's own event file: SummaryWriter.add_hparams would start another run)."""
        if self.writer is None:
            return
        from tensorboardX.summary import hparams

        tagged = {SUMMARY_PREFIX + k: v for k, v in values.items()}
        self.log(step, tagged)
        for proto in hparams(self.params, tagged):
            self.writer.file_writer.add_summary(proto)

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflow:
    """One MLflow run per run dir (a resumed run continues it), in one experiment per sweep."""

    RUN_DIR_TAG = "llmx.run_dir"

    def __init__(self, settings: dict, where: Placement, params: dict) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        _into_llmx_log("mlflow")
        self.client = MlflowClient(tracking_uri=where.location("mlflow", settings))
        name = settings.get("experiment") or where.group or "llmx"
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        earlier = self.client.search_runs([experiment], f"tags.`{self.RUN_DIR_TAG}` = '{where.run_dir}'",
                                          max_results=1)
        if earlier:  # a resumed run: MLflow refuses a parameter logged twice
            self.run_id = earlier[0].info.run_id
            params = {k: v for k, v in params.items() if k not in earlier[0].data.params}
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment, run_name=where.name,
                                                 tags={self.RUN_DIR_TAG: str(where.run_dir)}).info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for k in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=items[k:k + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def summary(self, step: int, values: dict[str, float], summary: dict) -> None:
        self.log(step, {SUMMARY_PREFIX + k: v for k, v in values.items()})
        self.client.set_tag(self.run_id, "llmx.summary", json.dumps(summary, default=str)[:5000])

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class Wandb:
    """An offline run by default (`wandb sync` uploads it); its id follows the run dir, so a resumed run continues."""

    def __init__(self, settings: dict, where: Placement, params: dict) -> None:
        import wandb

        with _quiet():
            self.run = wandb.init(
                mode=settings.get("mode", "offline"), dir=where.location("wandb", settings),
                project=settings.get("project"), entity=settings.get("entity"),
                group=settings.get("group") or where.group, name=where.name, config=params,
                id=hashlib.sha256(str(where.run_dir).encode()).hexdigest()[:16], resume="allow",
                settings=wandb.Settings(silent=True, console="off", save_code=False, disable_git=True,
                                        x_disable_stats=True))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def summary(self, step: int, values: dict[str, float], summary: dict) -> None:
        self.run.summary.update(json.loads(json.dumps(summary, default=str)))

    def close(self, ok: bool) -> None:
        with _quiet():
            self.run.finish(exit_code=0 if ok else 1)


class SwanLab:
    """Offline by default: the run stays in swanlog/ (`swanlab sync <run>` uploads it)."""

    def __init__(self, settings: dict, where: Placement, params: dict) -> None:
        import swanlab

        with _quiet():
            self.run = swanlab.init(
                mode=settings.get("mode", "offline"), log_dir=where.location("swanlab", settings),
                project=settings.get("project"), workspace=settings.get("workspace"),
                group=settings.get("group") or where.group, name=where.name, config=params, reinit=True,
                settings=swanlab.Settings(terminal={"proxy_type": "none"}, probe={"monitor": False}))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def summary(self, step: int, values: dict[str, float], summary: dict) -> None:
        self.log(step, {SUMMARY_PREFIX + k: v for k, v in values.items()})

    def close(self, ok: bool) -> None:
        with _quiet():
            self.run.finish(state="success" if ok else "crashed")


TRACKERS = {"visualdl": VisualDL, "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb, "swanlab": SwanLab}


class Trackers:
    """The open trackers of a run, fed as one."""

    def __init__(self, trackers: list) -> None:
        self.trackers = trackers
        self.step = 0  # the last step logged: the summary's

    def log(self, record: dict) -> None:
        self.step = int(record.get("step", self.step))
        values = scalars(record)
        if values:
            for tracker in self.trackers:
                tracker.log(self.step, values)

    def finish(self, summary: Optional[dict]) -> None:
        """The summary (None: the run failed), then every tracker closed, whatever one of them raises."""
        errors = []
        for tracker in self.trackers:
            try:
                if summary is not None:
                    tracker.summary(self.step, scalars(summary), summary)
            except Exception as error:  # noqa: BLE001 - closing the others first; re-raised below
                errors.append(error)
            try:
                tracker.close(ok=summary is not None)
            except Exception as error:  # noqa: BLE001 - as above
                errors.append(error)
        self.trackers = []
        if errors and summary is not None:
            raise errors[0]
        for error in errors:  # a failed run: its own error is the one to show
            log.warning("a tracker failed to close: %s", error)


def open_trackers(logger: dict, run_dir: str | Path, config: dict, sweep: bool = False) -> Trackers:
    """The trackers `logger` (the run config's resolved `logger` block) chooses, opened with `config`'s
    parameters (`sweep`: the run is a multirun's job). A tracker that fails to open closes those opened before it."""
    where, params, opened = Placement.of(run_dir, sweep), flat_params(config), []
    try:
        for name, tracker in TRACKERS.items():
            if logger.get(name) is not None:
                opened.append(tracker(logger[name], where, params))
    except BaseException:
        Trackers(opened).finish(None)
        raise
    return Trackers(opened)


def hints(run_dir: str | Path) -> list[str]:
    """Console lines saying how to open what the trackers chosen for the run in `run_dir` wrote (what exists)."""
    from urllib.parse import urlparse

    from omegaconf import OmegaConf

    where = Placement.of(run_dir)
    config = where.run_dir / ".hydra" / "config.yaml"
    logger = (OmegaConf.to_container(OmegaConf.load(config)).get("logger") if config.is_file() else None) or {}
    chosen = {name: settings or {} for name, settings in logger.items() if name in TRACKERS and settings is not None}
    lines = []
    for name in ("visualdl", "tensorboard"):
        logdir = Path(where.location(name, chosen[name])) if name in chosen else None
        if logdir is not None and logdir.is_dir() and any(logdir.iterdir()):
            shown = _shown(logdir if chosen[name].get("logdir") else where.root)  # a sweep: all its jobs
            lines.append(f"curves:  {name} --logdir {shown}")
    if "mlflow" in chosen:
        uri = where.location("mlflow", chosen["mlflow"])
        local = urlparse(uri).path if uri.startswith(("file:", "sqlite:")) else (uri if ":" not in uri else None)
        if local is None or Path(local).exists():
            lines.append(f"mlflow:  mlflow ui --backend-store-uri {uri}")
    if "wandb" in chosen and chosen["wandb"].get("mode", "offline") == "offline":
        runs = Path(where.location("wandb", chosen["wandb"])) / "wandb"
        if any(runs.glob("offline-run-*")):
            lines.append(f"wandb:   wandb sync {_shown(runs)}/offline-run-*")
    if "swanlab" in chosen:
        swanlog, mode = Path(where.location("swanlab", chosen["swanlab"])), chosen["swanlab"].get("mode", "offline")
        if any(swanlog.glob("run-*")) and mode in ("offline", "local"):
            lines.append(f"swanlab: swanlab {'sync' if mode == 'offline' else 'watch'} {_shown(swanlog)}"
                         f"{'/run-*' if mode == 'offline' else ''}")
    return lines
