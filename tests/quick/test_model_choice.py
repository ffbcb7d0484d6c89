"""The model group follows the checkpoint (llmx.sources.family_of, llmx.model_choice), paddle-free:
each kind of path names its family; without model= the composed config is that family's; a typed model=
of another family stops in one line, before paddle and before a run directory."""
from __future__ import annotations

import json
import struct

from helpers import compose, config_error, input_error, run_launch
from omegaconf import OmegaConf

from llmx.sources import family_of


def _model(path, architecture, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [architecture], "paddlenlp_version": "3.0.0b4",
                                                  **config}))
    return path


def _hf(path, **config):
    """A Hugging Face directory: its config.json and a safetensors file saved by torch (format pt)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return path


def _run(path, family, **summary):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"model": {"family": family}}))
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_each_kind_of_path_names_its_family(tmp_path):
    qwen = _model(tmp_path / "qwen", "QWenForCausalLM")
    assert family_of(str(qwen)) == "qwen"
    assert family_of(str(_model(tmp_path / "pipe", "Qwen2ForCausalLMPipe"))) == "qwen2"
    run = _run(tmp_path / "run", "qwen", model_dir=str(qwen))
    assert family_of(str(run)) == "qwen"
    # A Baichuan run exports a LlamaForCausalLM: the run's record tells it from Llama, its model dir alone cannot.
    llama_class = _model(tmp_path / "baichuan_run" / "model", "LlamaForCausalLM")
    assert family_of(str(llama_class)) == "llama"
    assert family_of(str(_run(tmp_path / "baichuan_run", "baichuan", model_dir=str(llama_class)))) == "baichuan"
    # A record that contradicts the exported model's class loses to the model.
    assert family_of(str(_run(tmp_path / "odd_run", "gpt3", model_dir=str(qwen)))) == "qwen"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "lora_config.json").write_text(json.dumps({"base_model_name_or_path": str(qwen)}))
    assert family_of(str(adapter)) == "qwen"
    lora_run = _run(tmp_path / "lora_run", "qwen", adapter_dir=str(adapter), base_model=str(qwen))
    assert family_of(str(lora_run)) == "qwen"
    assert family_of(str(_hf(tmp_path / "hf_mistral", model_type="mistral"))) == "mistral"
    # ChatGLM and ChatGLM2 share model_type chatglm; their marker keys tell them apart.
    assert family_of(str(_hf(tmp_path / "glm", model_type="chatglm", inner_hidden_size=64))) == "chatglm"
    assert family_of(str(_hf(tmp_path / "glm2", model_type="chatglm", multi_query_group_num=2))) == "chatglm2"
    assert family_of(str(_model(tmp_path / "unknown", "NoSuchForCausalLM"))) is None
    assert family_of(str(tmp_path / "missing")) is None


def _with_hydra(*overrides):
    """compose(), with the hydra node (choices, overrides) kept."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmx.schema import CONF_DIR

    compose()  # registers llmx's schemas and the wrap
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)


def test_without_model_the_config_is_the_checkpoints_family(tmp_path):
    qwen = _model(tmp_path / "qwen", "QWenForCausalLM")
    cfg = compose("stage=infer", f"model.name_or_path={qwen}", "model.dtype=bfloat16")
    with_model = compose("stage=infer", "model=qwen", f"model.name_or_path={qwen}", "model.dtype=bfloat16")
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(with_model)
    assert cfg.model.family == "qwen" and cfg.model.dtype == "bfloat16"
    hydra = _with_hydra("stage=infer", f"model.name_or_path={qwen}").hydra
    assert hydra.runtime.choices.model == "qwen"  # the run dir is outputs/infer/qwen/...
    assert list(hydra.overrides.task)[-1] == "model=qwen"  # recorded, so rerun replays it
    # The same family, or one loading the same class (Baichuan over a Llama model dir), is left as chosen.
    llama = _model(tmp_path / "llama", "LlamaForCausalLM")
    assert _with_hydra("model=llama", f"model.name_or_path={llama}").hydra.runtime.choices.model == "llama"
    # ... but the default group, tiny (a Llama too), gives way to the family's: the run is named after what it runs
    assert _with_hydra(f"model.name_or_path={llama}").hydra.runtime.choices.model == "llama"
    assert compose("model=baichuan", f"model.name_or_path={llama}").model.family == "baichuan"
    # A path naming no family leaves the group alone (validation reports what is wrong with it).
    assert compose(f"model.name_or_path={tmp_path / 'missing'}").model.family == "llama"


def test_a_typed_model_of_another_family_is_one_line(tmp_path):
    qwen = _model(tmp_path / "qwen", "QWenForCausalLM")
    assert input_error("stage=infer", "model=qwen2", f"model.name_or_path={qwen}") == (
        f"llmx: config error: model=qwen2 (model.family=qwen2): {qwen} holds a qwen model; "
        "leave model= out to follow the checkpoint, or use model=qwen")
    assert input_error("stage=infer", "model.family=gpt3", f"model.name_or_path={qwen}").startswith(
        f"llmx: config error: model.family=gpt3: {qwen} holds a qwen model")
    # As launch.py: exit 2, one line, paddle never imported (config_error checks), and no run directory.
    line = config_error("stage=infer", "model=tiny", f"model.name_or_path={qwen}", tmp_path=tmp_path)
    assert line.startswith(f"llmx: config error: model=tiny (model.family=llama): {qwen} holds a qwen model")
    assert not (tmp_path / "run").exists()


def test_cfg_job_shows_the_checkpoints_family_without_paddle(tmp_path):
    hf = _hf(tmp_path / "hf", model_type="qwen2")
    proc = run_launch("stage=convert", f"model.name_or_path={hf}", "--cfg", "job", tmp_path=tmp_path)
    assert proc.returncode == 0 and "TEST-WATCH" not in proc.stderr, proc.stderr
    assert OmegaConf.create(proc.stdout).model.family == "qwen2"
