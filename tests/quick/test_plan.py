"""`python -m llmx plan` / `launch.py plan=true`: the per-device memory estimate of a layout.

The parameter formulas (llmx.plan) are checked against published totals of real sizes without building
them (and exactly against the real PaddleNLP models at every family's `tiny` size in
tests/runs/test_families.py); the commands run without paddle and start no training.
"""
from __future__ import annotations

import pytest
from helpers import HEAVY_IMPORT_MARK, compose, config_error, run_launch, run_python

from llmx.schema import CONF_DIR, model_hparams
from llmx.families import FAMILIES as TABLE
from llmx.plan import GIB, count_params, estimate, hyperparameters

FAMILIES = sorted(p.stem for p in CONF_DIR.glob("model/*.yaml") if p.stem != "tiny")
_compose = compose


def test_family_defaults_match_paddlenlp_config_classes():
    """A size that leaves a key out gets the config class default; the family table restates those defaults."""
    wrong = []
    for family in TABLE.values():
        config = family.load_class("config_class")()
        ours = hyperparameters(family.name, {})
        wrong += [f"{family.name}.{key}: table {ours[key]!r} != {type(config).__name__} {getattr(config, key)!r}"
                  for key in family.defaults if getattr(config, key) != ours[key]]
    assert not wrong, "\n".join(wrong)


# Published totals (Hugging Face checkpoints' parameter counts).
PUBLISHED = {("llama", "7b"): 6.74e9, ("qwen2", "7b"): 7.62e9, ("mixtral", "8x7b"): 46.7e9, ("gemma", "7b"): 8.54e9,
             ("llama", "70b"): 68.98e9, ("mistral", "7b"): 7.24e9, ("chatglm2", "6b"): 6.24e9, ("bloom", "7b1"): 7.07e9,
             # DeepSeek-V3's main model (its 14B multi-token-prediction module left out); V2-Lite's 15.7B
             ("deepseek_v3", "671b"): 671e9, ("deepseek_v3", "v2_lite"): 15.7e9,
             ("qwen2_moe", "a2.7b"): 14.3e9, ("qwen2_moe", "57b-a14b"): 57.4e9, ("qwen3_moe", "30b-a3b"): 30.5e9,
             ("qwen3_moe", "235b-a22b"): 235.1e9}
# Gemma 2 and 3 (text): the checkpoints' own counts (google/gemma-2-2b: 2,614,341,888; gemma-3-1b: 999,885,952).
PUBLISHED.update({("gemma2", "2b"): 2.614e9, ("gemma2", "9b"): 9.242e9, ("gemma2", "27b"): 27.227e9,
                  ("gemma3", "1b"): 0.99989e9})
# Qwen3: Hugging Face's counts of the safetensors (the 0.6B's card: 0.6B, its tied head counted once).
PUBLISHED.update({("qwen3", "0.6b"): 0.596e9, ("qwen3", "4b"): 4.02e9, ("qwen3", "8b"): 8.19e9, ("qwen3", "14b"): 14.8e9,
                  ("qwen3", "32b"): 32.8e9})


@pytest.mark.parametrize("family,size", sorted(PUBLISHED))
def test_real_sizes_match_published_totals(family, size):
    m = _compose(f"model={family}", f"model.size={size}").model
    counted = count_params(family, model_hparams(m)).total
    assert abs(counted - PUBLISHED[family, size]) / PUBLISHED[family, size] < 0.01, counted


# Published active parameters per token of mixtures of experts (the model cards' figures).
PUBLISHED_ACTIVE = {("mixtral", "8x7b"): 12.9e9, ("mixtral", "8x22b"): 39.1e9,
                    # DeepSeek-V3's README_WEIGHTS.md: 36.6B activated, counting the output head but not the input
                    # embedding (a lookup), which llmx counts too: 129280 x 7168 (the model card rounds to 37B)
                    ("deepseek_v3", "671b"): 36.6e9 + 129280 * 7168,
                    ("qwen2_moe", "a2.7b"): 2.7e9, ("qwen3_moe", "30b-a3b"): 3.3e9, ("qwen3_moe", "235b-a22b"): 22e9}


@pytest.mark.parametrize("family,size", sorted(PUBLISHED_ACTIVE))
def test_moe_sizes_match_published_active_parameters(family, size):
    m = _compose(f"model={family}", f"model.size={size}").model
    params = count_params(family, model_hparams(m))
    published = PUBLISHED_ACTIVE[family, size]
    # 1%, or the cards' last digit (0.1B) where that is more: Qwen3-30B-A3B's "3.3B" is 3.35B counted
    assert abs(params.active - published) < max(0.01 * published, 0.1e9), params.active
    assert params.active < params.total


def test_memory_formulas():
    """The per-device terms, recomputed by hand for qwen2 7b (h 3584, 28 heads, 4 KV heads of 128, MLP 18944,
    vocabulary 152064, 28 layers) on tp4pp2, bf16: the first pipeline stage (2 micro-batches in flight) is the
    busiest; the last holds the logits."""
    cfg = _compose("model=qwen2", "model.size=7b", "parallel=tp4pp2", "model.dtype=bfloat16",
                   "stage.data.max_length=4096", "stage.train.batch_size=1", "stage.train.grad_accum=8")
    plan = estimate(cfg)
    g = plan["per_device_gib"]
    h, V, layers, inner, kv_dim, heads, hd = 3584, 152064, 28, 18944, 512, 28, 128
    params = count_params("qwen2", model_hparams(cfg.model))
    first = (layers // 2 * params.layer + V * h) / 4  # 14 layers + the embedding, over tp
    last = (layers // 2 * params.layer + V * h + h) / 4  # 14 layers + the final norm and lm_head
    assert plan["model"]["parameters_per_device"] == round(first)
    assert g["parameters"] == pytest.approx(first * 2 / GIB) and g["gradients"] == g["parameters"]
    assert g["optimizer"] == pytest.approx(first * 12 / GIB)  # 2 fp32 moments + fp32 master weights
    s = 4096
    # per token and layer: 8 h kept whole on each tp rank, the rest split by tp = 4
    per_layer = (8 * h + (4 * h + 2 * kv_dim + 3 * inner + heads * s + 2 * hd) / 4) * 2
    assert plan["batch"]["micro_batches_in_flight"] == 2  # 1F1B: pp micro-batches on the first stage
    acts = s * (per_layer * 14 * 2 + h * 2)
    assert g["logits"] == 0 and g["activations"] == pytest.approx(acts / GIB)
    assert g["activations_recompute"] == pytest.approx(s * (h * 2 * 14 * 2 + per_layer + h * 2) / GIB)
    states = g["parameters"] + g["gradients"] + g["optimizer"]
    # saving a checkpoint copies the optimizer's states (a pipeline stage writes its weights without a copy); here
    # the training step's activations weigh more
    assert g["checkpoint_save"] == pytest.approx(states + g["optimizer"]) and g["checkpoint_save"] < states + g["activations"]
    assert g["total"] == pytest.approx(states + g["activations"]) and g["process"] == 0  # not device=cpu
    logits = V / 4 * (2 + 4 + 4)  # bf16 logits, their float32 copy and float32 softmax, vocabulary split by tp
    last_acts = s * (per_layer * 14 + 2 * h * 2 + logits)  # one micro-batch, the final norm, the logits
    # the last stage holds one micro-batch's activations: saving a checkpoint (its 12 bytes of optimizer states
    # per parameter copied) weighs more there
    assert last * 16 + last_acts < last * (16 + 12)
    assert plan["per_pipeline_stage_gib"] == pytest.approx([g["total"], last * (16 + 12) / GIB])

    # data parallelism: the rank that writes the checkpoint (data-parallel rank 0) also copies the weights it writes
    dp = estimate(_compose("model=qwen2", "model.size=7b", "parallel=dp2"), device="cpu")
    (writing,), (other,) = dp["per_pipeline_stage_gib"], dp["per_pipeline_stage_gib_not_writing"]
    d = dp["per_device_gib"]
    assert d["checkpoint_save"] == pytest.approx(d["parameters"] + d["gradients"] + 2 * d["optimizer"] + d["parameters"])
    assert writing == pytest.approx(d["total"]) and writing - other == pytest.approx(d["parameters"])
    assert plan["per_pipeline_stage_gib_not_writing"] == plan["per_pipeline_stage_gib"]  # tp4pp2: every rank writes

    zero2 = estimate(_compose("model=qwen2", "model.size=7b", "parallel=sharding_stage2", "parallel.sharding=8"))
    single = estimate(_compose("model=qwen2", "model.size=7b"))
    z, s1 = zero2["per_device_gib"], single["per_device_gib"]
    assert z["parameters"] == pytest.approx(s1["parameters"])  # stage 2 keeps whole parameters
    assert z["gradients"] == pytest.approx(s1["gradients"] / 8) and z["optimizer"] == pytest.approx(s1["optimizer"] / 8)


def test_logits_and_the_reference_model_count():
    """Preference training keeps a frozen copy of the model (DPO's reference) unless the adapters are what trains
    (the reference is the base with them off) or the loss is reference-free; LoRA trains rank*(in+out) per projection."""
    base = ("model=qwen2", "model.size=0.5b", "model.dtype=float16", "stage.data.max_length=4096",
            "stage.train.batch_size=1", "parallel=single")
    sft = estimate(_compose("stage=sft", *base))["per_device_gib"]
    dpo = estimate(_compose("stage=dpo", *base))
    g = dpo["per_device_gib"]
    assert dpo["extra_models"] == {"reference": "frozen"}
    assert g["extra_models"] == pytest.approx(sft["parameters"])  # the reference: parameters only, model dtype
    assert g["total"] == pytest.approx(sft["total"] + sft["parameters"])
    assert g["logits"] == pytest.approx(4096 * 151936 * (2 + 4 + 4) / GIB)  # fp16 logits + fp32 copy + fp32 softmax
    assert estimate(_compose("stage=dpo", *base, "stage.loss_type=simpo"))["extra_models"] == {}

    lora = estimate(_compose("stage=dpo", *base, "stage.peft.method=lora", "stage.peft.lora_r=8"))
    h, kv_dim, inner, layers = 896, 128, 4864, 24
    assert lora["extra_models"] == {}
    assert lora["per_device_gib"]["gradients"] == pytest.approx(8 * layers * (9 * h + 2 * kv_dim + 3 * inner) * 2 / GIB)
    assert lora["per_device_gib"]["parameters"] == pytest.approx(sft["parameters"])
    ppo = estimate(_compose("stage=ppo", "stage.reward_model=/nonexistent", *base[:3]))
    assert ppo["extra_models"] == {"critic": "trained", "reference": "frozen", "reward": "frozen"}
    assert ppo["batch"]["seq_length"] == 96 + 16  # the prompt and the sampled answer


def _plan(*overrides: str, capsys) -> list[str]:
    """`python -m llmx plan <overrides>`'s output lines (its main(), in this process)."""
    from llmx.plan import main

    capsys.readouterr()
    assert main(list(overrides)) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_plan_command_verdicts(capsys):
    fits = _plan("model=qwen2", "model.size=7b", "parallel=tp4pp2", "+device_memory_gb=80", capsys=capsys)
    assert fits[-1].startswith("fits: yes (") and "GiB of 80 GiB, with recompute:" in fits[-1], fits
    assert any(line.split()[:1] == ["parameters"] for line in fits), fits
    too_big = _plan("model=llama", "model.size=7b", "parallel=tp2", "device_memory_gb=16", capsys=capsys)
    assert too_big[-1].startswith("fits: no (") and "GiB of 16 GiB" in too_big[-1], too_big
    unknown = _plan("model=llama", "model.size=7b", capsys=capsys)
    assert unknown[-1].startswith("fits: unknown (give device_memory_gb="), unknown


def test_plan_commands_print_the_plan_without_paddle_and_run_nothing(tmp_path, capsys):
    overrides = ["model=qwen2", "model.size=7b", "parallel=tp4pp2"]
    expected = _plan(*overrides, "+device_memory_gb=80", capsys=capsys)
    proc = run_python("-m", "llmx", "plan", *overrides, "device_memory_gb=80", tmp_path=tmp_path)
    assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
    assert proc.stdout.strip().splitlines() == expected
    run_dir = tmp_path / "run"
    proc = run_launch(*overrides, "plan=true", "device_memory_gb=80", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
    assert proc.stdout.strip().splitlines() == expected
    assert not run_dir.exists()  # nothing ran: Hydra's files are removed with the directory


def test_impossible_layout_is_one_line_error(tmp_path, capsys):
    from llmx.plan import main

    assert main(["model=qwen2", "model.size=tiny", "parallel=tp4pp2"]) == 2
    assert capsys.readouterr().err.strip() == "llmx: config error: parallel.tp=4: must divide the model's KV heads (2)"
    line = config_error("model=qwen2", "parallel=tp4pp2", "plan=true", tmp_path=tmp_path)
    assert line == "llmx: config error: parallel.tp=4: must divide the model's KV heads (2)"
