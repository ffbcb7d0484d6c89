"""The dependency rules of the layout (README, Architecture), checked on the source: imports run down the
layers with no circle; the engine imports no stage, algorithm or data format; paddle-free modules stay
paddle-free; importing a module changes nothing."""
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


# The layers of README's Architecture section, top to bottom: a module imports from its own layer and the
# ones below it, never from one above. Units are llmx's packages and its top-level modules.
LAYERS = (
    ("entry", {"__main__", "cli", "run", "plan", "rerun", "sweep", "search", "launcher", "slurm", "diff",
               "model_choice", "family_table", "groups_table"}),
    ("stages", {"stages"}),
    ("algorithms", {"align", "rl", "merge"}),
    ("infer/serve", {"serve", "infer"}),
    ("engine", {"engine"}),
    ("data/convert/quant/ops", {"data", "convert", "quant", "ops", "sources", "models"}),
    ("ground", {"schema", "config", "families", "layout", "rope", "compat", "errors", "console", "experiment", "tokens",
                "devices", "tracking", "safe_pickle", "loss_chunks"}),
)
# The explained exceptions: validation asks what a checkpoint path holds (its kind, family and config.json,
# read without converting it; test_paddle_free_validation proves no paddle comes with it).
UPWARD = {("schema", "sources"), ("schema", "convert")}


def _unit(module: str) -> str:
    return module.split(".")[1]


def _layer(unit: str) -> int:
    found = [i for i, (_, units) in enumerate(LAYERS) if unit in units]
    assert found, f"llmx.{unit} is in no layer of LAYERS"
    return found[0]


def _llmx_edges():
    """(importer unit, imported unit, file) for every import of llmx by llmx, at module level or inside a function."""
    for path in sorted(LLMX.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        me = rel.parts[1]
        for m in _imports(path):
            if m.startswith("llmx.") and _unit(m) != me:
                yield me, _unit(m), f"{'/'.join(rel.parts)}.py: {m}"


def test_imports_run_down_the_layers():
    up = [where for me, other, where in _llmx_edges() if _layer(other) < _layer(me) and (me, other) not in UPWARD]
    assert not up, "imports from a higher layer:\n" + "\n".join(up)


def test_no_circle_between_units():
    graph = {}
    for me, other, _ in _llmx_edges():
        graph.setdefault(me, set()).add(other)

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    circles = sorted(f"{a} -> {b} -> ... -> {a}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not circles, circles


def test_engine_imports_no_stage_algorithm_or_data_format():
    for path in sorted((LLMX / "engine").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("llmx.stages", "llmx.align", "llmx.rl", "llmx.merge",
                                                          "llmx.data", "llmx.infer", "llmx.serve"))}
        assert not bad, f"{path.name} imports {bad}"


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
import llmx.cli, llmx.config, llmx.layout, llmx.rope, llmx.families, llmx.experiment, llmx.data.sft, llmx.data.pretrain
import llmx.data.packing, llmx.data.encoders, llmx.diff, llmx.rerun, llmx.plan, llmx.run, llmx.launcher, llmx.console, llmx.stages
import llmx.stages.sft, llmx.stages.pretrain, llmx.sweep, llmx.devices, llmx.slurm, llmx.tokens, llmx.sources
import llmx.stages.infer, llmx.stages.serve, llmx.data.infer, llmx.infer.sampling, llmx.infer.text, llmx.infer.support
import llmx.stages.dpo, llmx.stages.kto, llmx.data.preference, llmx.data.demo_preference
import llmx.stages.rm, llmx.stages.ppo, llmx.stages.grpo, llmx.rl.config, llmx.rl.rewards
import llmx.families.record, llmx.families.formulas, llmx.families.fixes, llmx.families.llama, llmx.families.moe
import llmx.family_table, llmx.groups_table, llmx.search, llmx.tracking, llmx.schema.logger
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
