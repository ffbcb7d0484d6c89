"""llmx.families: what llmx knows per family (one module each), checked against PaddleNLP itself."""
from __future__ import annotations

import importlib
import inspect
import json

import pytest
from helpers import REPO, compose

from llmx.errors import ConfigError
from llmx.families import FAMILIES, family
from llmx.families.record import HPARAMS_FILE


def test_every_model_file_names_a_family_of_the_table_and_back():
    from omegaconf import OmegaConf

    files = {p.stem for p in (REPO / "conf" / "model").glob("*.yaml")} - {"tiny"}  # tiny: llama at its tiny size
    assert files == set(FAMILIES)
    for name in files:
        assert OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml").family == name
    assert compose("model=tiny").model.family == "llama"


def test_hparams_file_is_up_to_date_with_paddlenlp():
    """hparams.json is generated from PaddleNLP (python -m llmx.families.generate_hparams)."""
    from llmx.families.generate_hparams import generate

    assert json.loads(HPARAMS_FILE.read_text()) == generate()


def test_table_classes_exist_in_paddlenlp():
    from llmx.engine.prefix_hooks import CACHE_LAYOUTS, MASK_PADDERS
    from llmx.infer.runners import RUNNERS
    from llmx.families import fixes

    for f in FAMILIES.values():
        for cls in (f.architecture, f.config_class, f.pipeline_class):  # (paddlenlp's, or llmx.models' own)
            assert cls is None or hasattr(importlib.import_module(f.classes), cls), (f.name, cls)
        assert f.prefix_cache is None or f.prefix_cache in CACHE_LAYOUTS, f.name
        assert f.prefix_mask is None or f.prefix_mask in MASK_PADDERS, f.name
        assert (f.prefix_cache is None) == bool(f.no_prefix), f.name  # refused with a reason, or supported
        # the engine's runner passes the cache under this keyword: the class's forward must take it
        keyword = RUNNERS[f.engine_cache].cache_keyword
        assert f.no_engine or keyword in inspect.signature(f.load_class().forward).parameters, f.name
        assert all(fix.phase in (fixes.BEFORE_BUILD, fixes.AFTER_RANDOM_INIT) for fix in f.fixes), f.name
        assert all(fix.__module__ == f"llmx.families.{f.name}" and fix.__doc__ for fix in f.fixes), f.name


def test_dims_unify_spellings_and_defaults():
    assert family("bloom").dims({"num_attention_heads": 8, "n_layer": 4}) == {
        "heads": 8, "kv_heads": 8, "layers": 4, "vocab": 250880}
    assert family("chatglm2").dims({"num_attention_heads": 4, "multi_query_group_num": 2, "num_layers": 6,
                                    "padded_vocab_size": 1024}) == {"heads": 4, "kv_heads": 2, "layers": 6, "vocab": 1024}
    assert family("llama").dims({"num_attention_heads": 8})["kv_heads"] == 8  # None: one KV head per head


def test_unknown_hyperparameter_lists_close_matches():
    with pytest.raises(ConfigError, match=r"^model.overrides.num_head: unknown hyperparameter for model family qwen2 "
                                          r"\(did you mean num_attention_heads, num_key_value_heads, "):
        family("qwen2").check_hyperparameter_names(["hidden_size", "num_head"], "model.overrides")
    with pytest.raises(ConfigError, match="not a hyperparameter of LlamaConfig"):
        family("llama").check_hyperparameter_names(["zzz"], "model.overrides")
    with pytest.raises(ConfigError, match=r"model.family='gpt4': allowed: llama, baichuan"):
        family("gpt4")


def test_each_family_is_one_module_with_its_record_and_formula():
    from llmx.families import BUILTIN

    assert list(FAMILIES) == list(BUILTIN)
    for name in BUILTIN:
        record = importlib.import_module(f"llmx.families.{name}").FAMILY
        assert record is FAMILIES[name] and record.name == name and record.count_params is not None


def test_a_dotted_family_name_imports_its_module(tmp_path, monkeypatch):
    (tmp_path / "outfams").mkdir()
    (tmp_path / "outfams" / "__init__.py").write_text("")
    (tmp_path / "outfams" / "mine.py").write_text(
        "from llmx.families.record import Family\nFAMILY = Family('mine', 'LlamaForCausalLM', 'LlamaConfig', ())\n")
    (tmp_path / "outfams" / "empty.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert family("outfams.mine").name == "mine"
    assert family("outfams.mine").known_hyperparameters() is None  # no names listed: none checked
    family("outfams.mine").check_hyperparameter_names(["anything"], "model.overrides")
    with pytest.raises(ConfigError, match=r"^model.family='outfams.nothere': no module outfams.nothere"):
        family("outfams.nothere")
    with pytest.raises(ConfigError, match=r"outfams.empty has no FAMILY"):
        family("outfams.empty")
    with pytest.raises(ConfigError, match="gives no parameter formula"):
        family("outfams.mine").params({})


def test_readme_family_table_is_the_families_command_output(capsys):
    """README's table is what `python -m llmx families` prints from the records (rerun it after a record changes)."""
    import re

    from llmx.family_table import main

    main([])
    printed = capsys.readouterr().out.strip()
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- families table: python -m llmx families -->\n(.*?)\n<!-- end of families table -->", readme, re.S)
    assert found and found.group(1).strip() == printed
    assert all(f"| {name} |" in printed for name in FAMILIES)


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.no_sequence_parallel])
def test_sequence_parallelism_is_refused_before_launch_where_the_record_says(name):
    from helpers import input_error

    line = input_error(f"model={name}", "parallel=tp2", "parallel.sequence_parallel=true")
    assert line == (f"llmx: config error: parallel.sequence_parallel=True: model family {name}: "
                    f"{FAMILIES[name].no_sequence_parallel}")
