"""The dependency rules of DESIGN.md's layout, checked on the source: the engine imports no stage and no
data format; paddle-free modules stay paddle-free; importing a module changes nothing."""
from __future__ import annotations

import ast
import subprocess
import sys

from helpers import REPO

LLMX = REPO / "llmx"


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_engine_imports_no_stage_and_no_data_format():
    for path in sorted((LLMX / "engine").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("llmx.stages", "llmx.data"))}
        assert not bad, f"{path.name} imports {bad}"


def test_infer_and_serve_sit_between_stages_and_engine():
    """`stages -> serve -> infer -> engine`: the engine imports neither, infer no server, neither a stage."""
    for path in sorted((LLMX / "engine").glob("*.py")):
        assert not {m for m in _imports(path) if m.startswith(("llmx.infer", "llmx.serve"))}, path.name
    for folder, banned in (("infer", ("llmx.serve", "llmx.stages")), ("serve", ("llmx.stages",))):
        for path in sorted((LLMX / folder).glob("*.py")):
            assert not {m for m in _imports(path) if m.startswith(banned)}, f"{folder}/{path.name}"


def test_schema_sits_at_the_ground():
    """llmx.schema imports no data reader, engine, stage or algorithm: only the ground beside it, and llmx.sources
    for what a checkpoint path is (whose family check, llmx.convert.cache's, reads config files only)."""
    ground = ("llmx.schema", "llmx.errors", "llmx.families", "llmx.layout", "llmx.sources", "llmx.devices",
              "llmx.convert.cache")
    for path in sorted((LLMX / "schema").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith("llmx") and not m.startswith(ground)}
        assert not bad, f"schema/{path.name} imports {bad}"


def test_stages_do_not_import_each_other():
    stages = {p.stem for p in (LLMX / "stages").glob("*.py") if not p.stem.startswith("_")}
    for name in stages:
        others = {f"llmx.stages.{s}" for s in stages - {name}}
        assert not _imports(LLMX / "stages" / f"{name}.py") & others, name


def test_paddle_free_modules_and_importing_changes_nothing():
    code = """
import sys
import hydra._internal.utils as hu
from hydra.core.config_store import ConfigStore
before = (hu.run_and_report, sorted(ConfigStore.instance().repo))
import llmx.cli, llmx.config, llmx.layout, llmx.families, llmx.experiment, llmx.data.sft, llmx.data.pretrain
import llmx.data.packing, llmx.diff, llmx.rerun, llmx.plan, llmx.run, llmx.launcher, llmx.console, llmx.stages
import llmx.stages.sft, llmx.stages.pretrain, llmx.sweep, llmx.devices, llmx.slurm, llmx.tokens, llmx.sources
import llmx.stages.infer, llmx.stages.serve, llmx.data.infer, llmx.infer.sampling, llmx.infer.text, llmx.infer.support
import llmx.stages.dpo, llmx.stages.kto, llmx.data.preference, llmx.data.demo_preference
import llmx.stages.rm, llmx.stages.ppo, llmx.stages.grpo, llmx.rl.config, llmx.rl.rewards
import llmx.families.record, llmx.families.formulas, llmx.families.fixes, llmx.families.llama
import llmx.schema, llmx.schema.run, llmx.schema.model, llmx.schema.train, llmx.schema.peft, llmx.schema.preference
import llmx.convert.cache, llmx.convert.gguf
import llmx.compat, llmx.compat.hydra
import llmx.align, llmx.align.options
after = (hu.run_and_report, sorted(ConfigStore.instance().repo))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "paddlenlp"))
print(before == after, heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[]"]
