"""Every option of every config group composes (Hydra's compose API) and validates without
importing paddle; `--cfg job`, `--help` and `--info defaults-tree` answer from the config tree.

The compose-everything check runs this file as a script in fresh interpreters
(`python tests/test_compose.py SHARD NSHARDS`), so that nothing another test imported into the
pytest process can hide a heavy import; each shard prints one JSON line: the configs it checked,
the problems it found and the paddle modules it ended up with (there must be none).
"""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import HEAVY_IMPORT_MARK, REPO, run_launch, run_python
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from llmx.errors import ConfigError
from llmx.families import FAMILIES
from llmx.stages import register_configs, validate

CONF = REPO / "conf"
GROUPS = ("model", "stage", "parallel", "quant", "logger")
NO_PREFIX_TUNING = {name for name, f in FAMILIES.items() if f.prefix_cache is None}
SHARDS = 2


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def cases() -> list[list[str]]:
    """Defaults; each group's options one at a time; every model with the adapter stages
    (their targets and support are per family). `[model=X, "sizes"]` expands to every size of X."""
    one_at_a_time = [[f"{group}={option}"] for group in GROUPS for option in options(group)]
    adapters = [[f"model={m}", f"stage={s}"] for m in options("model") for s in ("lora", "prefix")]
    sizes = [[f"model={m}", "sizes"] for m in options("model")]
    return [[]] + one_at_a_time + adapters + sizes


def check(overrides: list[str], cfg=None) -> str | None:
    """Validate one config (composed from `overrides` unless given); None if it is as expected,
    else what is wrong."""
    cfg = compose(config_name="config", overrides=overrides) if cfg is None else cfg
    choice = dict(o.split("=", 1) for o in overrides)
    expected_error = None
    if choice.get("parallel") == "tp4pp2":  # a layout for bigger models: the tiny one has 2 KV heads
        expected_error = "parallel.tp=4: must divide the model's KV heads (2)"
    elif choice.get("stage") == "infer":  # its prompts file has no default
        expected_error = "stage.input=None: needs a JSONL file of prompts"
    elif choice.get("stage") == "convert":  # converts model.name_or_path: nothing to convert by default
        expected_error = "model.name_or_path=None: needs the directory to convert"
    elif cfg.model.family == "chatglm" and cfg.stage.runner != "sft":  # its GLM encoding is written for SFT
        expected_error = "trains with stage=sft (and its adapters) only"
    elif choice.get("stage") == "merge":  # merges need models to merge
        expected_error = "linear needs at least 1 model(s), got 0"
    elif choice.get("stage") == "ppo":  # PPO's reward is a reward model, trained first (stage=rm)
        expected_error = "stage.reward_model=None: stage.reward=model needs a reward model"
    elif choice.get("stage") == "quantize":  # and quantization a method
        expected_error = "stage=quantize needs a method"
    elif choice.get("quant", "none") != "none":  # a quant config is for stage=quantize only
        expected_error = "only stage=quantize applies a quant config"
    elif "peft" in cfg.stage and cfg.stage.peft.method == "prefix" and cfg.model.family in NO_PREFIX_TUNING:
        expected_error = f"prefix tuning is not supported for model family {cfg.model.family}"
    try:
        validate(cfg)
    except ConfigError as e:
        return None if expected_error and expected_error in str(e) else f"ConfigError: {e}"
    if expected_error:
        return f"validated, but expected ConfigError: {expected_error}"
    if choice.get("model", "tiny") != "tiny" and cfg.model.family != choice["model"]:
        return f"model.family={cfg.model.family}"
    stage = choice.get("stage", "sft")
    own = OmegaConf.load(CONF / "stage" / f"{stage}.yaml").get("runner")
    if own not in (None, "sft"):  # a runner of its own (pretrain, dpo, kto, ...)
        return None if cfg.stage.runner == own else f"stage.runner={cfg.stage.runner}"
    if cfg.stage.runner != "sft" or cfg.stage.peft.method != ("none" if stage == "sft" else stage):
        return f"stage.runner={cfg.stage.runner} stage.peft.method={cfg.stage.peft.method}"
    if cfg.model.size != choice.get("model.size", "tiny"):
        return f"model.size={cfg.model.size}"
    return None


def run_shard(shard: int, shards: int) -> dict:
    checked, problems = [], []

    def one(overrides: list[str], cfg=None) -> None:
        problem = check(overrides, cfg)
        checked.append(" ".join(overrides))
        if problem:
            problems.append(f"{' '.join(overrides) or '(defaults)'}: {problem}")

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for case in cases()[shard::shards]:
            if case[-1:] != ["sizes"]:
                one(case)
                continue
            base = compose(config_name="config", overrides=case[:-1])
            sizes = list(base.model.sizes)
            if "tiny" not in sizes or len(sizes) < 2:
                problems.append(f"{case[0]}: sizes {sizes} (need tiny plus the published sizes)")
            for size in sizes:  # as `model.size=<size>` would compose it
                cfg = base.copy()
                cfg.model.size = size
                one([*case[:-1], f"model.size={size}"], cfg)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "paddlenlp"))
    return {"checked": checked, "problems": problems, "heavy_modules": heavy}


def test_option_names_say_what_the_files_hold():
    """model: one file per family of the table (plus tiny); parallel: the name is the layout;
    stage: each names a runner module that has run()."""
    import re

    from llmx.stages import stage_module

    assert set(options("model")) == set(FAMILIES) | {"tiny"}
    for name in options("parallel"):
        degrees = {"dp": 1, "tp": 1, "pp": 1, "sharding": 1, "sharding_stage": 0}
        degrees.update({k: int(v) for k, v in re.findall(r"(dp|tp|pp)(\d+)", name)})
        if (stage := re.search(r"sharding_stage(\d)", name)) is not None:
            degrees.update(sharding=2, sharding_stage=int(stage.group(1)))
        held = OmegaConf.load(CONF / "parallel" / f"{name}.yaml")
        assert {k: held[k] for k in degrees} == degrees, name
    for name in options("stage"):
        runner = OmegaConf.load(CONF / "stage" / f"{name}.yaml").get("runner") or \
            OmegaConf.load(CONF / "stage" / "sft.yaml").runner  # lora/prefix inherit sft's
        assert callable(stage_module(runner).run), name
    from llmx.schema import QUANT_ALGORITHMS

    assert "none" in options("quant")
    for name in options("quant"):  # gptq_w4 holds gptq, ...: the algorithm is the name's first word
        assert OmegaConf.load(CONF / "quant" / f"{name}.yaml").algorithm == name.split("_")[0] in QUANT_ALGORITHMS, name


def test_every_option_and_size_composes_and_validates_without_paddle(tmp_path):
    def shard(i: int) -> dict:
        (tmp_path / str(i)).mkdir()
        proc = run_python(__file__, str(i), str(SHARDS), tmp_path=tmp_path / str(i))
        assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(SHARDS) as pool:
        reports = list(pool.map(shard, range(SHARDS)))
    problems = [p for r in reports for p in r["problems"]]
    assert problems == [], "\n".join(problems)
    assert [r["heavy_modules"] for r in reports] == [[]] * SHARDS
    checked = {c for r in reports for c in r["checked"]}
    for group in GROUPS:
        for option in options(group):
            assert f"{group}={option}" in checked
    for expected in ("", "model=yuan stage=prefix", "model=qwen2 stage=lora", "model=llama model.size=70b",
                     "model=qwen2 model.size=72b", "model=mixtral model.size=8x22b",
                     "model=chatglm2 model.size=chatglm3_6b", "model=tiny model.size=7b"):
        assert expected in checked, expected
    assert len(checked) > 80, len(checked)


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """launch.py's --cfg job, --help and --info defaults-tree, run side by side."""
    asked = {"cfg": ["--cfg", "job"], "help": ["--help"], "info": ["--info", "defaults-tree"]}
    root = tmp_path_factory.mktemp("answers")
    with ThreadPoolExecutor(2) as pool:
        procs = pool.map(lambda args: run_launch(*args, tmp_path=root / args[0].strip("-")), asked.values())
        return dict(zip(asked, procs))


def test_cfg_job_prints_the_composed_config(answers):
    proc = answers["cfg"]
    assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
    assert "runner: sft" in proc.stdout and "family: llama" in proc.stdout
    cfg = OmegaConf.create(proc.stdout)
    assert set(cfg.keys()) == {"model", "stage", "parallel", "quant", "seed", "device", "verbose", "plan",
                               "device_memory_gb", "logger", "runtime"}
    assert (cfg.model.size, cfg.stage.peft.method, cfg.parallel.tp, cfg.quant.algorithm) == ("tiny", "none", 1, "none")


def test_help_lists_groups_and_their_options(answers):
    proc = answers["help"]
    assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
    listed = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.split(":")[0] in GROUPS)
    for group in GROUPS:
        assert listed.get(group) == ", ".join(options(group)), (group, proc.stdout)
    for option in ("qwen2", "lora", "prefix", "single", "none"):
        assert option in proc.stdout
    # every stage with the first comment line of its conf file as its description
    stages = proc.stdout.split("== Stages (stage=NAME) ==")[1].split("==")[0]
    described = dict(line.split(None, 1) for line in stages.strip().splitlines())
    assert set(described) == set(options("stage"))
    for name, text in described.items():
        first_comment = next(ln for ln in (CONF / "stage" / f"{name}.yaml").read_text().splitlines() if ln.startswith("#"))
        assert text.strip() == first_comment.lstrip("# ").strip()


def test_info_defaults_tree(answers):
    proc = answers["info"]
    assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
    assert "model: tiny" in proc.stdout and "stage: sft" in proc.stdout


if __name__ == "__main__":
    shard_index, shard_count = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (0, 1)
    print(json.dumps(run_shard(shard_index, shard_count)))
