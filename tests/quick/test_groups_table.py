"""`python -m llmx groups`: README's list of config groups and stages is the conf tree's (llmx.groups_table)."""
from __future__ import annotations

import re

from helpers import REPO

from llmx.groups_table import groups, markdown, stage_runner
from llmx.schema import CONF_DIR


def test_readme_groups_block_is_the_groups_command_output(capsys):
    """README's block is what `python -m llmx groups` prints from conf/ (rerun it after adding a group, an option
    or a stage, and paste its output between the markers)."""
    from llmx.groups_table import main

    main([])
    printed = capsys.readouterr().out.strip()
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- groups: python -m llmx groups -->\n(.*?)\n<!-- end of groups -->", readme, re.S)
    assert found, "README has no groups block"
    assert found.group(1).strip() == printed


def test_every_group_folder_and_every_option_file_is_listed():
    listed = groups()
    folders = {p.parent.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR}
    assert set(listed) == folders
    assert list(listed)[:4] == ["model", "stage", "parallel", "quant"]  # conf/config.yaml's defaults order first
    for group, options in listed.items():
        files = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
        # every file is an option, but the piece submitit_slurm.yaml includes under the global package
        assert set(options) == files - ({"llmx_slurm_registration"} if group == "hydra/launcher" else set()), group
    table = markdown()
    for stage in listed["stage"]:
        assert re.search(rf"^\| `{stage}` \| `\w+` \| \S", table, re.M), stage


def test_stage_runners_are_what_hydra_composes():
    """The runner of a stage file that names none, the one of the file it extends, is the one launch.py's
    composition gives (`stage=lora` runs sft's runner); a file that names its runner names it for itself."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from llmx.stages import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # once: composing is the cheap part
        for stage in groups()["stage"]:
            if "runner" in OmegaConf.load(CONF_DIR / "stage" / f"{stage}.yaml"):
                continue
            assert stage_runner(stage) == compose("config", overrides=[f"stage={stage}"]).stage.runner, stage


def test_a_new_group_folder_is_picked_up_with_its_default(tmp_path):
    """A group added to conf/ (here `conf/callbacks/`) is listed without a change to the generator, its default bold."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "callbacks").mkdir()
    for name in ("early_stop", "profiler"):
        (conf / "callbacks" / f"{name}.yaml").write_text(f"# {name}\nkind: {name}\n")
    primary = (conf / "config.yaml").read_text().replace("  - quant: none\n", "  - quant: none\n  - callbacks: [profiler]\n")
    (conf / "config.yaml").write_text(primary)
    assert list(groups(conf))[:5] == ["model", "stage", "parallel", "quant", "callbacks"]
    assert "| `callbacks` | early_stop, **profiler** |" in markdown(conf).splitlines()
