"""A model family from outside llmx, from one module and one conf file alone (as a stage from outside
llmx is, tests/runs/test_engine_runs.py): `model.family=myfams.tinyllama2` names the module, whose
`FAMILY` record validation, `plan` and model building read as they read llmx's own."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from helpers import FAST, REPO, launch, read_json

FAMILY_MODULE = '''
"""A Llama-architecture family with its own name, LoRA targets, parameter formula and fix."""
import os
from pathlib import Path

from llmx.families import llama
from llmx.families.fixes import before_build
from llmx.families.record import Family, Params


def count_params(hp):
    """Llama without biases: q/k/v/o (k and v for the KV heads), a gated MLP, two RMSNorms per layer;
    embedding, final norm and an untied lm_head."""
    h, V, I = hp["hidden_size"], hp["vocab_size"], hp["intermediate_size"]
    head_dim = h // hp["num_attention_heads"]
    q, kv = hp["num_attention_heads"] * head_dim, hp["num_key_value_heads"] * head_dim
    layer = 2 * h * q + 2 * h * kv + 3 * h * I + 2 * h
    return Params(layer, hp["num_hidden_layers"], embed=V * h, head=h + V * h)


@before_build
def note_build(model=None):
    """Not an upstream problem: leaves a mark, so the test sees the family's fixes run."""
    Path(os.environ["TINYLLAMA2_MARK"]).write_text("built")


FAMILY = Family("tinyllama2", "LlamaForCausalLM", "LlamaConfig", (".*q_proj.*", ".*v_proj.*"),
                defaults=llama.DEFAULTS, hparams=tuple(sorted(llama.FAMILY.known_hyperparameters())),
                count_params=count_params, fixes=(note_build,))
'''
MODEL_CONF = """# A Llama-architecture family from outside llmx.
family: myfams.tinyllama2
size: tiny
name_or_path: null
tokenizer: null
dtype: float32
sizes:
  tiny: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128, vocab_size: 512, max_position_embeddings: 512, seq_length: 512, pad_token_id: 3, bos_token_id: 1, eos_token_id: 2}
overrides: {}
"""
H, LAYERS, HEADS, KV_HEADS, FF, VOCAB, RANK = 64, 2, 4, 2, 128, 512, 8


def test_a_family_from_a_module_and_a_conf_file_alone(tmp_path):
    (tmp_path / "pkg" / "myfams").mkdir(parents=True)
    (tmp_path / "pkg" / "myfams" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "myfams" / "tinyllama2.py").write_text(FAMILY_MODULE)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tinyllama2.yaml").write_text(MODEL_CONF)
    mark = tmp_path / "mark"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "pkg"), os.environ.get("PYTHONPATH")])),
               TINYLLAMA2_MARK=str(mark))
    env.pop("HYDRA_FULL_ERROR", None)
    common = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tinyllama2", "stage=lora"]

    # plan: the module's formula, without paddle
    proc = subprocess.run([sys.executable, "-m", "llmx", "plan", *common, "--format", "json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    planned = json.loads(proc.stdout)["model"]
    head_dim = H // HEADS
    layer = 2 * H * HEADS * head_dim + 2 * H * KV_HEADS * head_dim + 3 * H * FF + 2 * H
    total = LAYERS * layer + 2 * VOCAB * H + H
    assert planned == {"family": "myfams.tinyllama2", "size": "tiny", "dtype": "float32", "parameters": total,
                       "active_parameters": total, "parameters_per_device": total}  # (dense: every parameter active)
    assert not mark.exists()  # plan builds nothing

    # its hyperparameter names are checked as a built-in family's are
    bad = launch(*common, "model.overrides.num_head=2", f"hydra.run.dir={tmp_path / 'bad'}", env=env, check=False)
    assert bad.returncode == 2 and "model.overrides.num_head: unknown hyperparameter for model family tinyllama2" in bad.stderr

    run = tmp_path / "run"
    launch(*common, "stage.train.max_steps=2", "stage.train.logging_steps=1", "stage.eval.enabled=false", *FAST,
           f"hydra.run.dir={run}", env=env)
    summary = read_json(run / "summary.json")
    assert summary["total_params"] == planned["parameters"] + summary["trainable_params"]  # the built base + LoRA
    # LoRA on its own targets only: q_proj (h -> heads*head_dim) and v_proj (h -> kv_heads*head_dim)
    assert summary["trainable_params"] == LAYERS * RANK * ((H + HEADS * head_dim) + (H + KV_HEADS * head_dim))
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    assert mark.read_text() == "built"  # its fix ran before the model was built
