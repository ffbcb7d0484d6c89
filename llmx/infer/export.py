"""Static export: the model as an inference program `(input_ids, attention_mask, position_ids) ->
logits of the last position`, saved with paddle.jit and run with Paddle Inference.

What works with paddle 3.3.1 + paddlenlp 3.0.0b4 (DESIGN.md): `to_static(full_graph=True)` (the
default SOT mode trips over fleet's hybrid group), int64 InputSpecs with free batch and length;
`jit.save` writes `<prefix>.json` + `<prefix>.pdiparams` (PIR). PaddleNLP's own generation export
does not run on CPU (its top_p_sampling op has no float32 CPU kernel), so the decode loop stays
outside the program: the engine's, with StaticRunner."""
from __future__ import annotations

from pathlib import Path

import paddle

PREFIX = "inference"


class _LastLogits(paddle.nn.Layer):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, return_dict=False)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        return logits[:, -1, :].astype("float32")


def export_program(model, tokenizer, out_dir: Path) -> Path:
    """Write the program, its parameters, the tokenizer and the model config into out_dir."""
    from llmx.convert.tokenizer import save_tokenizer
    from llmx.engine.generate import whole_vocab_logits
    from llmx.experiment import atomic_dir
    from llmx.ops.patch import composed_only

    model.eval()
    spec = [paddle.static.InputSpec([None, None], "int64", name) for name in ("input_ids", "attention_mask", "position_ids")]
    with atomic_dir(Path(out_dir)) as tmp, whole_vocab_logits(model), composed_only(model):
        static = paddle.jit.to_static(_LastLogits(model), input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(Path(tmp) / PREFIX))
        save_tokenizer(tokenizer, tmp)
        model.config.save_pretrained(str(tmp))
    return Path(out_dir)


def program_config(program_dir):
    """The exported model's config: the family's config class where llmx knows the family (PaddleNLP's
    AutoConfig does not know the model types of llmx.models, Qwen3's), else AutoConfig."""
    import json

    from paddlenlp.transformers import AutoConfig

    from llmx.families import family, family_of_paddle_config

    name = family_of_paddle_config(json.loads((Path(program_dir) / "config.json").read_text()))
    reader = family(name).load_class("config_class") if name else AutoConfig
    return reader.from_pretrained(str(program_dir))


def is_program_dir(path) -> bool:
    return path is not None and (Path(path) / f"{PREFIX}.pdiparams").is_file()


def load_predictor(program_dir, device: str = "cpu"):
    from paddle import inference

    prefix = str(Path(program_dir) / PREFIX)
    config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    if device == "gpu":
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        # Paddle 3.3.1's oneDNN passes print `ReduceMeanCheckIfOneDNNSupport` to stdout on every run (console
        # noise a run must not show); plain CPU kernels give the same greedy tokens.
        config.disable_mkldnn()
    config.disable_glog_info()
    return inference.create_predictor(config)
