"""`python -m llmx diff RUN_A RUN_B [RUN_C ...]`: what differs between runs.

Prints the config keys whose values differ (flattened dotted keys, values side by
side, including which option each config group chose), then the summary metrics
with their change relative to the first run. Works on run dirs and sweep job
dirs alike (both hold `.hydra/` and `summary.json`). Imports no paddle.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llmx.errors import UserError

MISSING = "<absent>"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested dicts; lists and scalars are leaf values."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def load_run(run_dir: Path) -> tuple[dict, dict]:
    """(flattened config incl. group choices, summary) of one run directory."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir}: not a run directory (no .hydra/config.yaml)")
    config = flatten(OmegaConf.to_container(OmegaConf.load(config_file), resolve=False))
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choices = OmegaConf.load(hydra_file).hydra.runtime.choices
        config.update({f"defaults.{group}": choice for group, choice in choices.items() if not group.startswith("hydra/")})
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return config, summary


def _fmt(value: Any) -> str:
    if value is MISSING:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def compare(run_dirs: list[Path]) -> dict:
    runs = [load_run(d) for d in run_dirs]
    configs, summaries = [r[0] for r in runs], [r[1] for r in runs]
    keys = sorted(set().union(*configs))
    changed = {k: [c.get(k, MISSING) for c in configs] for k in keys
               if len({_fmt(c.get(k, MISSING)) for c in configs}) > 1}
    metrics = {}
    for key in sorted(set().union(*summaries)):
        values = [s.get(key) for s in summaries]
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numeric) == len(values) and all(math.isfinite(v) for v in numeric):
            metrics[key] = {"values": values, "delta": [v - values[0] for v in values[1:]]}
    return {"runs": [str(d) for d in run_dirs], "config": changed, "metrics": metrics}


def render(result: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=2, default=str)
    names = [Path(r).name or r for r in result["runs"]]
    cfg_rows = [[k, *map(_fmt, v)] for k, v in result["config"].items()]
    metric_rows = [[k, *map(_fmt, m["values"]), *(f"{d:+.6g}" for d in m["delta"])] for k, m in result["metrics"].items()]
    cfg_head = ["key", *names]
    metric_head = ["metric", *names, *(f"Δ {n}" for n in names[1:])]
    if fmt == "md":
        return "\n".join(["## config", _md(cfg_head, cfg_rows), "", "## metrics", _md(metric_head, metric_rows)])
    return "\n".join(["config keys that differ:", _text(cfg_head, cfg_rows) if cfg_rows else "  (none)", "",
                      "summary metrics:", _text(metric_head, metric_rows) if metric_rows else "  (none)"])


def _md(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _text(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmx diff", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="two or more run (or sweep job) directories")
    parser.add_argument("--format", choices=("text", "md", "json"), default="text")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two run directories")
    print(render(compare(args.runs), args.format))
    return 0
