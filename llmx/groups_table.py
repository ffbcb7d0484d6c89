"""`python -m llmx groups`: llmx's config groups with their options, and every stage with its runner and what it
does, read from the conf tree (paddle-free).

Every folder under conf/ that holds option files is a group (`hydra/launcher` too), so a group added there is
listed without a change here; the options the defaults list of conf/config.yaml chooses are in bold. A stage's
runner is the one its file names or that of the stage file it extends (lora extends sft); its description is
the first comment line of its file (llmx.stages.describe, as `--help` shows it). README's groups block is this
command's output (tests/quick/test_groups_table.py keeps the two equal). An entry-layer module.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from llmx.schema import CONF_DIR
from llmx.stages import describe

PRIMARY = "config.yaml"  # the primary config, not a group's option


def groups(conf_dir: Path = CONF_DIR) -> Dict[str, List[str]]:
    """{group: its options}, the groups conf/config.yaml's defaults list names first, in its order, then the
    others by name. A file that a sibling includes under another package (`- name@package` in the sibling's
    defaults, as submitit_slurm includes llmx_slurm_registration) is part of that option, not one of its own."""
    found = {}
    for folder in sorted({p.parent for p in conf_dir.rglob("*.yaml")} - {conf_dir}):
        files = sorted(folder.glob("*.yaml"))
        parts = {entry.split("@")[0] for f in files for entry in OmegaConf.load(f).get("defaults", [])
                 if isinstance(entry, str) and "@" in entry}
        found[folder.relative_to(conf_dir).as_posix()] = [f.stem for f in files if f.stem not in parts]
    chosen = [g for g in defaults(conf_dir) if g in found]
    return {g: found[g] for g in chosen + sorted(set(found) - set(chosen))}


def defaults(conf_dir: Path = CONF_DIR) -> Dict[str, List[str]]:
    """{group: the options conf/config.yaml's defaults list chooses} (a list where a group takes several)."""
    chosen = {}
    for entry in OmegaConf.to_container(OmegaConf.load(conf_dir / PRIMARY)).get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                chosen[group.lstrip("/")] = option if isinstance(option, list) else [option]
    return chosen


def stage_runner(name: str, conf_dir: Path = CONF_DIR) -> str:
    """The runner a stage file names (`runner:`), or that of the sibling it extends (lora's `defaults: [sft]`),
    read as llmx.stages.register_configs reads an outside stage's runner: the file itself, not a composition."""
    conf = OmegaConf.load(conf_dir / "stage" / f"{name}.yaml")
    if isinstance(conf.get("runner"), str):
        return conf.runner
    extended = [e for e in conf.get("defaults", []) if isinstance(e, str) and (conf_dir / "stage" / f"{e}.yaml").is_file()]
    return stage_runner(extended[-1], conf_dir) if extended else "?"


def markdown(conf_dir: Path = CONF_DIR) -> str:
    found, chosen = groups(conf_dir), defaults(conf_dir)
    lines = ["| group | options (**default**) |", "|---|---|"]
    for group, options in found.items():
        shown = [f"**{o}**" if o in chosen.get(group, []) else o for o in options]
        lines.append(f"| `{group}` | {', '.join(shown)} |")
    stages = found.get("stage", [])
    lines += ["", "| stage | runner | what it does |", "|---|---|---|"]
    lines += [f"| `{s}` | `{stage_runner(s, conf_dir)}` | {describe(s, conf_dir).replace('|', chr(92) + '|')} |" for s in stages]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmx groups", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(markdown())
    return 0
