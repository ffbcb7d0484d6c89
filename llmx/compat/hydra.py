"""Hydra patches (found in hydra-core 1.3.8, omegaconf 2.3.1): config errors as one line.

Our contract is one line on stderr naming the key, the value and what is allowed, and exit
code 2, for every config problem (ours, Hydra's, OmegaConf's). Hydra prints composition errors
over several lines (plus a hint about HYDRA_FULL_ERROR) and a Python traceback for errors
raised by the task, and offers no hook to change that, hence the patches. `install()` applies
them (llmx.cli.install calls it for launch.py; importing this module changes nothing);
`config_error_line` is the one line itself, which `python -m llmx plan` prints too.
tests/quick/test_compat.py fails when the Hydra behaviour a patch relies on changes.

- `_run_and_report` replaces `hydra._internal.utils.run_and_report` (which the module's
  `_run_hydra` looks up as a global): config problems become one line and exit code 2 (or a
  failed rank's exit code); anything else keeps Hydra's report. Can go when Hydra lets an
  application format its errors.
- `_return_value` replaces the `JobReturn.return_value` property: for a failed job Hydra writes
  "Error executing job with overrides: [...]" to stderr before re-raising its exception, a
  second line for a UserError. Can go with `_run_and_report`.
- `_silence_schema_warning`: llmx's conf/hydra/launcher/submitit_slurm.yaml replaces the
  plugin's config on purpose (llmx.slurm); Hydra 1.3 warns about such a file at every
  composition ("deprecated in Hydra 1.1", still there in 1.3.8), before any llmx code could.
  Can go when Hydra drops that automatic schema match.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from typing import Any, Callable

import hydra._internal.utils as hydra_utils
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from llmx.errors import UserError

EXIT_CONFIG_ERROR = 2
SCHEMA_WARNING = r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema"


def _allowed_keys(object_type: Any) -> str:
    if dataclasses.is_dataclass(object_type):
        return ", ".join(f.name for f in dataclasses.fields(object_type))
    return ""


def _omegaconf_line(ex: OmegaConfBaseException) -> str:
    key = getattr(ex, "full_key", None) or "?"
    if isinstance(ex, (ConfigKeyError, ConfigAttributeError)):  # overriding an unknown key raises the latter
        allowed = _allowed_keys(getattr(ex, "object_type", None))
        return f"{key}: unknown key" + (f" (allowed here: {allowed})" if allowed else "")
    if isinstance(ex, ValidationError):
        msg = str(getattr(ex, "msg", ex)).splitlines()[0]
        return f"{key}: {msg}"
    return f"{key}: {str(getattr(ex, 'msg', ex)).splitlines()[0]}"


def config_error_line(ex: BaseException) -> str | None:
    """The one-line message for a config problem, or None if `ex` is not one."""
    if isinstance(ex, UserError):
        return f"{ex.kind}: {ex}"
    if isinstance(ex, MissingConfigException):
        first = str(ex).splitlines()[0]
        options = getattr(ex, "options", None)
        return "config error: " + first + (f" (available: {', '.join(sorted(options))})" if options else "")
    if isinstance(ex, OverrideParseException):
        return "config error: bad override: " + " ".join(str(ex).split())
    cause = ex.__cause__ or ex.__context__
    if isinstance(ex, OmegaConfBaseException):
        return "config error: " + _omegaconf_line(ex)
    if isinstance(ex, ConfigCompositionException):
        if isinstance(cause, OmegaConfBaseException):
            return "config error: " + _omegaconf_line(cause)
        lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip() and "To append to your config" not in ln]
        return "config error: " + "; ".join(lines)
    return None


def _run_and_report(func: Callable[[], Any]) -> Any:
    try:
        return func()
    except Exception as ex:  # noqa: BLE001 - classified below, re-raised when not ours
        line = config_error_line(ex)
        if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            return _hydra_run_and_report(functools.partial(_reraise, ex))
        sys.stderr.write(f"llmx: {line}\n")
        sys.exit(getattr(ex, "exit_code", EXIT_CONFIG_ERROR))  # a failed rank's launcher exit code


def _reraise(ex: BaseException) -> None:
    raise ex


_hydra_run_and_report = hydra_utils.run_and_report
_hydra_return_value = JobReturn.return_value


def _return_value(self: JobReturn) -> Any:
    ex = self._return_value
    if self.status == JobStatus.FAILED and isinstance(ex, UserError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
        raise ex
    return _hydra_return_value.fget(self)


def _silence_schema_warning() -> None:
    warnings.filterwarnings("ignore", message=SCHEMA_WARNING, category=UserWarning)


def install() -> None:
    """Apply every patch above; idempotent."""
    _silence_schema_warning()
    hydra_utils.run_and_report = _run_and_report
    # (In a multirun, llmx.run.run_job records failures instead of raising them; llmx.sweep reports them.)
    JobReturn.return_value = property(_return_value, _hydra_return_value.fset)
