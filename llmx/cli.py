"""launch.py's preparation of Hydra: schemas, one-line config errors, Slurm without -m.

`install()` (called by launch.py's entry point; importing this module changes nothing):
- registers llmx's schemas and resolvers (llmx.stages.register_configs), and the schemas of
  outside stages whose conf files a `hydra.searchpath=[file://...]` override brings in;
- wraps Hydra's `run_and_report`: Hydra prints composition errors over several lines
  (plus a hint about HYDRA_FULL_ERROR), and a Python traceback for errors raised by the
  task. Our contract is one line naming the key, the value and what is allowed, so config
  problems (ours, Hydra's, OmegaConf's) become one line on stderr and exit code 2; anything
  else keeps Hydra's report. Hydra offers no hook for this, hence the wrap.
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
from llmx.stages import register_configs

EXIT_CONFIG_ERROR = 2


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


def search_path_dirs(argv: list[str]) -> list[str]:
    """The folders a `hydra.searchpath=[file://...]` override adds (parsed by Hydra's own parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirs = []
    for arg in argv:
        if arg.lstrip("+").startswith("hydra.searchpath="):
            try:
                value = OverridesParser.create().parse_overrides([arg])[0].value()
            except Exception:  # noqa: BLE001 - a bad override is reported by Hydra itself
                continue
            dirs += [v[len("file://"):] for v in (value if isinstance(value, list) else [value])
                     if isinstance(v, str) and v.startswith("file://")]
    return dirs


def install(argv: list[str] = sys.argv) -> None:
    """Prepare Hydra for launch.py (see the module docstring); idempotent."""
    # llmx's conf/hydra/launcher/submitit_slurm.yaml replaces the plugin's config on purpose (llmx.slurm);
    # Hydra 1.3 warns about such a file at every composition, before any llmx code could.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema",
                            category=UserWarning)
    register_configs(search_path_dirs(argv[1:]))
    hydra_utils.run_and_report = _run_and_report
    # Hydra writes "Error executing job with overrides: [...]" to stderr before re-raising a
    # failed job's exception; for a UserError that would be a second line. (In a multirun,
    # llmx.run.run_job records failures instead of raising them; llmx.sweep reports them.)
    JobReturn.return_value = property(_return_value, _hydra_return_value.fset)
    multirun_for_submitit(argv)


def multirun_for_submitit(argv: list[str] = sys.argv) -> None:
    """`python launch.py hydra/launcher=submitit_slurm ...` without -m: one Slurm job. Hydra uses
    launchers only in multirun mode, so switch it on (a one-job sweep)."""
    if any(a.startswith("hydra/launcher=submitit") for a in argv[1:]) and not {"-m", "--multirun"} & set(argv[1:]):
        argv.insert(1, "--multirun")
