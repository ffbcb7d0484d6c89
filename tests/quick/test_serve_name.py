"""The name a server lists in /v1/models and shows on its page (llmx.stages.serve), for each kind of
model.name_or_path: what a user knows the model by."""
import json

from omegaconf import OmegaConf

from llmx.stages.serve import _model_name


def _cfg(name_or_path=None, model_name=None, static_dir=None):
    return OmegaConf.create({"stage": {"model_name": model_name, "static_dir": static_dir},
                             "model": {"name_or_path": name_or_path, "family": "llama", "size": "tiny"}})


def _run(path, family, stage_choice, **summary):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(f"model:\n  family: {family}\n")
    (path / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      stage: {stage_choice}\n")
    if summary:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_served_name_of_each_kind_of_path(tmp_path):
    assert _model_name(_cfg()) == "llama-tiny"  # a random init
    assert _model_name(_cfg(model_name="mine", name_or_path=str(tmp_path))) == "mine"
    hf = tmp_path / "Qwen2-0.5B-Instruct"
    hf.mkdir()
    assert _model_name(_cfg(str(hf))) == "Qwen2-0.5B-Instruct"  # a directory keeps its dots
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert _model_name(_cfg(str(gguf))) == "SmolLM2-135M-Instruct.Q4_1"
    (tmp_path / "exported" / "model").mkdir(parents=True)
    assert _model_name(_cfg(str(tmp_path / "exported" / "model"))) == "exported"
    run = _run(tmp_path / "my_sft", "qwen", "sft", stage="sft", model_dir=str(tmp_path / "my_sft" / "model"))
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text(json.dumps({"architectures": ["QWenForCausalLM"]}))
    assert _model_name(_cfg(str(run))) == "sft-qwen-my_sft"
    assert _model_name(_cfg(str(run / "model"))) == "sft-qwen-my_sft"
    # a run whose summary names no stage: its Hydra record does; a static program exported by an infer run
    assert _model_name(_cfg(str(_run(tmp_path / "2026-01-01_10-00-00", "gemma", "lora")))) == "lora-gemma-2026-01-01_10-00-00"
    export = _run(tmp_path / "export", "qwen2", "infer", stage="infer")
    (export / "static").mkdir()
    assert _model_name(_cfg(static_dir=str(export / "static"))) == "infer-qwen2-export"
