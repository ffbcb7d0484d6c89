"""`python -m llmx rerun RUN_DIR [--check]`: run a recorded run again and see if it reproduces.

The new run replays the recorded overrides (`.hydra/overrides.yaml`, plus the Hydra
overrides that shape the job, such as a search path) through launch.py, into
`<RUN_DIR>_rerun-<time>` next to it (or `--into DIR`). If the config files changed
since, the composed config would differ from the recorded one: every key that differs
is pinned to its recorded value with one more override, and listed. Differences of code
(git sha, uncommitted changes) and package versions against provenance.json are listed
too. With `--check` the logged losses (train and eval, step by step) must equal the
recorded ones (within --rtol, exact by default): exit 1 names the first step that differs.
When the fused kernels that ran (summary.json) differ, a line says which. Imports no paddle.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from llmx.diff import flatten
from llmx.errors import UserError
from llmx.experiment import Experiment, code_version, package_versions
from llmx.launcher import NOT_INHERITED

LAUNCH = Path(__file__).resolve().parent.parent / "launch.py"


def recorded_overrides(run_dir: Path) -> list[str]:
    hydra_dir = run_dir / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no .hydra/config.yaml)")
    task = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    hydra = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.overrides.hydra
    return task + [o for o in hydra if not o.lstrip("+~").startswith(NOT_INHERITED)]


def hydra_value(value: Any) -> str:
    """`value` in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def composed_config(overrides: list[str]) -> dict:
    """The config launch.py composes for these overrides today (`--cfg job`, the same code path)."""
    proc = subprocess.run([sys.executable, str(LAUNCH), *overrides, "--cfg", "job"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"the recorded overrides no longer compose: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return OmegaConf.to_container(OmegaConf.create(proc.stdout), resolve=False)


def pins(run_dir: Path, overrides: list[str]) -> tuple[list[str], list[str]]:
    """(overrides that restore the recorded config, lines describing what changed)."""
    recorded = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False))
    today = flatten(composed_config(overrides))
    pinned, notes = [], []
    for key in sorted(set(recorded) | set(today)):
        if key in recorded and key in today and recorded[key] == today[key]:
            continue
        if key not in today:
            raise UserError(f"cannot reproduce {run_dir}: config key {key} no longer exists")
        if key not in recorded:
            notes.append(f"config key {key} is new since the run (now {today[key]!r}); left at its default")
            continue
        pinned.append(f"{key}={hydra_value(recorded[key])}")
        notes.append(f"config default changed since the run: {key} = {today[key]!r} now; pinned to {recorded[key]!r}")
    return pinned, notes


def provenance_notes(run_dir: Path) -> list[str]:
    path = run_dir / "provenance.json"
    if not path.is_file():
        return [f"{run_dir} has no provenance.json: code and package versions cannot be compared"]
    prov = json.loads(path.read_text())
    notes = []
    then, now = prov.get("code", {}), code_version(LAUNCH.parent)
    if then.get("git_sha") != now["git_sha"]:
        notes.append(f"code: git sha {then.get('git_sha')} then, {now['git_sha']} now")
    if (then.get("dirty"), then.get("diff_sha256")) != (now["dirty"], now["diff_sha256"]):
        notes.append(f"code: uncommitted changes differ (then dirty={then.get('dirty')}, now dirty={now['dirty']})")
    versions = package_versions()
    for name, version in sorted(prov.get("versions", {}).items()):
        if versions.get(name) != version:
            notes.append(f"package {name}: {version} then, {versions.get(name, 'not installed')} now")
    return notes


def fused_ops_note(run_dir: Path, rerun_dir: Path) -> Optional[str]:
    """The fused kernels that ran (summary.json, model.fused_ops auto/on) when they differ between the two
    runs: under `auto` a machine that cannot build them runs Paddle's composed ops, which round differently."""
    def ran(d: Path):
        path = d / "summary.json"
        return json.loads(path.read_text()).get("fused_ops") if path.is_file() else None

    then, now = ran(run_dir), ran(rerun_dir)
    if then is None or now is None or then == now:
        return None
    return (f"fused kernels: {', '.join(then) or 'none'} then, {', '.join(now) or 'none'} now "
            "(losses may differ by float32 rounding; `python -m llmx.ops check` says why a kernel is missing)")


def losses(run_dir: Path) -> list[tuple[int, str, float]]:
    return Experiment(run_dir, writer=False).logged_losses()


def first_difference(recorded: list, rerun: list, rtol: float) -> Optional[str]:
    for (step, key, want), (step2, key2, got) in zip(recorded, rerun):
        if (step, key) != (step2, key2):
            return f"step {step}: the recorded run logged {key} at step {step}, the rerun {key2} at step {step2}"
        if not math.isclose(got, want, rel_tol=rtol, abs_tol=0.0):
            return f"step {step}: {key} {want!r} recorded, {got!r} now"
    if len(recorded) != len(rerun):
        shorter = min(recorded, rerun, key=len)
        step = (recorded if len(recorded) > len(rerun) else rerun)[len(shorter)][0]
        return f"step {step}: logged by only one of the two runs ({len(recorded)} vs {len(rerun)} losses)"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmx rerun", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run (or sweep job) directory")
    parser.add_argument("--check", action="store_true", help="compare the logged losses step by step; exit 1 if any differs")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance of --check (default 0: exact)")
    parser.add_argument("--into", type=Path, help="run directory of the rerun (default: <RUN>_rerun-<time>)")
    args = parser.parse_args(argv)
    run_dir = args.run.resolve()
    overrides = recorded_overrides(run_dir)
    pinned, notes = pins(run_dir, overrides)
    notes += provenance_notes(run_dir)
    into = (args.into or run_dir.with_name(f"{run_dir.name}_rerun-{time.strftime('%Y-%m-%d_%H-%M-%S')}")).resolve()
    for note in notes:
        print(f"rerun: {note}")
    print(f"rerun: {run_dir} -> {into}", flush=True)
    code = subprocess.run([sys.executable, str(LAUNCH), *overrides, *pinned, f"hydra.run.dir={into}"]).returncode
    if code != 0:
        return code
    note = fused_ops_note(run_dir, into)
    if note:
        print(f"rerun: {note}")
    if args.check:
        recorded = losses(run_dir)
        if not recorded:
            raise UserError(f"{run_dir}: no losses in metrics.jsonl to compare")
        difference = first_difference(recorded, losses(into), args.rtol)
        if difference:
            print(f"llmx: rerun differs: first at {difference}", file=sys.stderr)
            return 1
        print(f"rerun: reproduced: all {len(recorded)} logged losses equal" + (f" (rtol {args.rtol:g})" if args.rtol else ""))
    return 0
