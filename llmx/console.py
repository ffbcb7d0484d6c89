"""What a run prints: the run dir, progress and a closing summary; libraries go to llmx.log.

Hydra's job logging (conf/config.yaml) sends every record to `<run dir>/llmx.log` and,
through `ConsoleFilter`, only llmx's own messages to the console. PaddleNLP logs through
a logger of its own with its own stderr handler, and Paddle and PaddleNLP raise many
warnings; `quiet_libraries` hands both to the root logger (so to llmx.log). `verbose=true`
lets everything through to the console as well. Paddle-free.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from llmx.experiment import Experiment

PADDLENLP_LOGGER = "PaddleNLP"
# Summary keys shown first at the end of a run, in this order, when the stage reported them; then the
# stage's other numbers; then the paths it wrote.
_FIRST = ("steps", "eval_loss", "train_loss", "final_loss", "exact_match", "eval_perplexity", "tokens_per_s",
          "trainable_params", "total_params")
_NOT_SHOWN = ("eval_loss_before", "epoch")  # eval_loss_before is shown with eval_loss
# The measured memory beside the plan's (llmx.run.memory_record) stays in summary.json, sweep tables and `diff`.
_NOT_SHOWN_PREFIX = "memory_"
# The `run dir:` line names what the run left there: these first, in this order, llmx.log last, the rest by
# name; not the bookkeeping that llmx's tools read for the user (provenance.json, status.json).
_FIRST_RECORDS = ("summary.json", "metrics.jsonl", "samples.jsonl", "checkpoints")
_BOOKKEEPING = ("provenance.json", "status.json")
# Summary figures worth comparing across runs (`python -m llmx diff`): what a config changes in a model or its speed,
# not a server's traffic or a conversion's tensor count. Matched as parts of the keys.
_COMPARABLE = ("loss", "perplexity", "exact_match", "score", "reward", "tokens_per_s", "accuracy")


class ConsoleFilter(logging.Filter):
    """llmx's INFO messages (logger `llmx` itself), warnings from anywhere in llmx, Hydra's sweep
    messages; everything when verbose."""

    verbose = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        name = record.name
        if name == "llmx" or name == "HYDRA":
            return record.levelno >= logging.INFO
        return name.startswith("llmx.") and record.levelno >= logging.WARNING


class ConsoleFormatter(logging.Formatter):
    """llmx's lines as they are (warnings as `llmx: warning: ...`); when verbose, every line with its
    time and logger, as llmx.log has them."""

    detailed = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if ConsoleFilter.verbose:
            return self.detailed.format(record)
        message = record.getMessage()
        if record.levelno >= logging.WARNING and record.name.startswith("llmx"):
            return f"llmx: {record.levelname.lower()}: {message}"
        return message


def quiet_libraries(verbose: bool) -> None:
    """Route Python warnings and PaddleNLP's logger into logging (llmx.log; the console too when
    verbose). Call again after paddlenlp is imported: its logger gets its stderr handler then."""
    ConsoleFilter.verbose = verbose
    logging.captureWarnings(True)
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO/WARNING lines (ranks inherit it)
    paddlenlp = logging.getLogger(PADDLENLP_LOGGER)
    for handler in list(paddlenlp.handlers):
        if type(handler) is logging.StreamHandler:
            paddlenlp.removeHandler(handler)
    paddlenlp.propagate = True


def say(message: str, *args: Any) -> None:
    """One line of progress on the console (and in llmx.log)."""
    logging.getLogger("llmx").info(message, *args)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def summary_lines(summary: Mapping[str, Any], run_dir: Path, seconds: float) -> list[str]:
    """The closing block: the main figures, the outputs the stage reported, and only the hints that apply to
    what the run left in `run_dir` (its records, curves, losses to reproduce)."""
    lines = [f"done in {seconds:.0f} s: {summary.get('stage', 'run')}"]
    numbers = [k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    shown = [k for k in _FIRST if k in summary] + [k for k in numbers if k not in _FIRST + _NOT_SHOWN
                                                   and not k.startswith(_NOT_SHOWN_PREFIX)]
    paths = [k for k, v in summary.items() if _is_output_path(k, v)]
    width = max((len(k) for k in shown + paths), default=0)
    for key in shown:
        value = _fmt(summary[key])
        if key == "eval_loss" and "eval_loss_before" in summary:
            value = f"{_fmt(summary['eval_loss_before'])} -> {value}"
        lines.append(f"  {key:<{width}}  {value}")
    lines += [f"  {key:<{width}}  {_relative(summary[key])}" for key in paths]
    run = _relative(run_dir)
    records = run_records(run_dir, shown_above=[Path(summary[k]) for k in paths])
    lines.append(f"run dir: {run}" + (f"  ({', '.join(records)})" if records else ""))
    lines += curve_hints(run_dir)
    hints = []
    if any(figure in key for key in numbers for figure in _COMPARABLE):
        hints.append(f"compare: python -m llmx diff {run} <another run>")
    if Experiment(run_dir, writer=False).logged_losses():
        hints.append(f"reproduce: python -m llmx rerun {run} --check")
    if hints:
        lines.append(";  ".join(hints))
    return lines


def run_records(run_dir: Path, shown_above: list[Path] = ()) -> list[str]:
    """What the run left in its directory, folders with a slash: the summary and logs first, llmx.log last, the
    rest by name between; bookkeeping files (provenance, status), hidden ones and the outputs `shown_above` left out."""
    if not run_dir.is_dir():
        return []
    skip = {p.resolve() for p in shown_above}
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                   if not p.name.startswith(".") and p.name not in _BOOKKEEPING and p.resolve() not in skip)
    first = [n for k in _FIRST_RECORDS for n in names if n.rstrip("/") == k]
    last = [n for n in names if n == "llmx.log"]
    return first + [n for n in names if n not in first + last] + last


def curve_hints(run_dir: Path) -> list[str]:
    """How to open what the run's trackers wrote, one line per tracker that wrote something (llmx.tracking knows
    where each one leaves its files)."""
    from llmx.tracking import hints

    return hints(run_dir)


def _is_output_path(key: str, value: Any) -> bool:
    """Does this summary entry name a file or directory the stage wrote (model_dir, adapter_dir, output, ...)?"""
    if not isinstance(value, str) or not value:
        return False
    named = key == "output" or key.endswith(("_dir", "_file", "_path")) or os.sep in value
    return named and Path(value).exists()


def _relative(path: Any) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
