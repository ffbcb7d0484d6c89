"""model.name_or_path resolution (llmx.sources): model, adapter and run directories, paddle-free."""
import json

import pytest

from llmx.errors import ConfigError
from llmx.sources import resolve


def _model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    return path


def _adapter(path, base, config="lora_config.json"):
    path.mkdir(parents=True)
    (path / config).write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return path


def _run(path, **summary):
    (path / ".hydra").mkdir(parents=True)
    if summary:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_model_dir(tmp_path):
    src = resolve(str(_model(tmp_path / "m")))
    assert (src.model_dir, src.adapter, src.tokenizer) == (str(tmp_path / "m"), None, str(tmp_path / "m"))


def test_adapter_dir_names_its_base(tmp_path):
    base = _model(tmp_path / "base")
    src = resolve(str(_adapter(tmp_path / "a", base)))
    assert (src.model_dir, src.adapter_dir, src.adapter, src.mergeable) == (str(base), str(tmp_path / "a"), "lora", True)
    assert src.tokenizer == str(base)  # the adapter dir has no tokenizer files


def test_run_dir_prefers_its_exported_model(tmp_path):
    run = _run(tmp_path / "run", model_dir=str(_model(tmp_path / "run/model")), adapter_dir=str(tmp_path / "run/adapter"))
    src = resolve(str(run))
    assert (src.model_dir, src.adapter, src.run_dir) == (str(run / "model"), None, str(run))


def test_run_dir_with_adapter_only(tmp_path):
    base = _model(tmp_path / "run/base_model")
    adapter = _adapter(tmp_path / "run/adapter", "/elsewhere", config="prefix_config.json")
    (adapter / "tokenizer_config.json").write_text("{}")
    run = _run(tmp_path / "run", adapter_dir=str(adapter), base_model=str(base))
    src = resolve(str(run))
    assert (src.model_dir, src.adapter, src.tokenizer, src.mergeable) == (str(base), "prefix", str(adapter), False)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "model.name_or_path={}: no such directory"),
    (lambda p: p.mkdir() or p, "model.name_or_path={}: not a model directory (no config.json)"),
    (lambda p: _run(p), "model.name_or_path: {} is an llmx run that has not finished (no summary.json)"),
    (lambda p: _run(p, eval_loss=1.0), "model.name_or_path: the llmx run {} exported no model or adapter"),
    (lambda p: _adapter(p, p / "gone"), "model.name_or_path: the lora adapter in {} names its base model"),
])
def test_one_line_errors(tmp_path, make, message):
    path = make(tmp_path / "x")
    with pytest.raises(ConfigError) as error:
        resolve(str(path))
    assert str(error.value).startswith(message.format(path)) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["stage=lora"], "is a quantized checkpoint (integer weights): train the float model"),
    (["stage=infer", "stage.input={prompts}", "parallel=tp2"], "is a quantized checkpoint: it is dequantized per layer"),
])
def test_quantized_checkpoints_are_refused_where_they_cannot_run(tmp_path, overrides, message):
    from helpers import input_error

    model = _model(tmp_path / "q")
    (model / "quant_config.json").write_text("{}")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"src": "hi"}\n')
    line = input_error(f"model.name_or_path={model}", *[o.format(prompts=prompts) for o in overrides])
    assert line.startswith(f"llmx: config error: model.name_or_path='{model}': {message}")
