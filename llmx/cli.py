"""launch.py's preparation of Hydra: schemas, one-line config errors, Slurm without -m.

`install()` (called by launch.py's entry point; importing this module changes nothing):
- registers llmx's schemas and resolvers (llmx.stages.register_configs), and the schemas of
  outside stages whose conf files a `hydra.searchpath=[file://...]` override brings in;
- spells a search's `interval(a,b,log)` as Hydra's `tag(log,interval(a,b))` (llmx.search);
- defers the PaddleNLP modules a run never uses (llmx.compat.paddlenlp_import);
- lets idle OpenMP threads sleep (llmx.devices.idle_threads_sleep);
- applies llmx.compat.hydra's patches: config problems (ours, Hydra's, OmegaConf's) become one
  line on stderr and exit code 2; anything else keeps Hydra's report.
"""
from __future__ import annotations

import sys

from llmx.compat import hydra as hydra_compat
from llmx.compat.paddlenlp_import import defer_unused_imports
from llmx.devices import idle_threads_sleep
from llmx.search import hydra_spelling
from llmx.stages import register_configs


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
    defer_unused_imports()  # paddlenlp's applications, imported by every rank and used by none
    idle_threads_sleep()  # before paddle's import loads the OpenMP runtimes
    argv[1:] = [hydra_spelling(a) for a in argv[1:]]  # a search's interval(a,b,log), which Hydra cannot parse
    register_configs(search_path_dirs(argv[1:]))
    hydra_compat.install()
    multirun_for_submitit(argv)


def multirun_for_submitit(argv: list[str] = sys.argv) -> None:
    """`python launch.py hydra/launcher=submitit_slurm ...` without -m: one Slurm job. Hydra uses
    launchers only in multirun mode, so switch it on (a one-job sweep)."""
    if any(a.startswith("hydra/launcher=submitit") for a in argv[1:]) and not {"-m", "--multirun"} & set(argv[1:]):
        argv.insert(1, "--multirun")
