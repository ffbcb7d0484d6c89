"""`python -m llmx plan [OVERRIDES...]`: will this layout fit? Per-device memory, estimated.

    python -m llmx plan model=qwen2 model.size=7b parallel=tp4pp2 +device_memory_gb=80
    python launch.py model=qwen2 model.size=7b parallel=tp4pp2 plan=true device_memory_gb=80

Hydra composes the config from the overrides (the same groups and keys as launch.py) and
`validate` checks it, so an impossible layout gives the usual one-line error. Then the
parameter count follows from the family's hyperparameters at `model.size` (the formula of its
module in llmx.families, exact against PaddleNLP's models: tests/runs/test_families.py), and the
memory of the busiest device from the layout, the micro-batch and the sequence length. Nothing is built and paddle is
never imported: the formulas restate PaddleNLP 3.0.0b4's layer shapes and config defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from llmx.errors import ConfigError
from llmx.schema import CONF_DIR, model_hparams
from llmx.stages import register_configs, validate
from llmx.families import Params, family
from llmx.layout import Layout, batching
from llmx.loss_chunks import ce_chunk_rows

GIB = 2**30

# ------------------------------------------------------------------ parameter count

def hyperparameters(family_name: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """`given` (a size, or a config.json) over the family's PaddleNLP defaults (llmx.families)."""
    return family(family_name).hyperparameters(given)


def count_params(family_name: str, given: Dict[str, Any]) -> Params:
    """The parameter count of `given`, by the family's formula (its module in llmx.families)."""
    return family(family_name).params(given)


# ------------------------------------------------------------------ memory per device

# What PaddleNLP 3.0.0b4's decoder layer keeps for backward, per token, in elements of the activation dtype,
# measured rather than derived (paddle's own count of allocated host memory after one forward of LlamaForCausalLM,
# fused_ops off, for hidden 256/512, intermediate 688/1376, 4/8 layers, 4/8 heads, 128/256 tokens, and for
# SmolLM2-135M's shapes (576, 1536, 30 layers, 9 heads, 3 KV heads) at 64/128 tokens; every point within 0.5%;
# `python bench/plan.py --fit` reruns the measurement):
#   per layer  KEPT_H*h + 2*kv_dim + KEPT_I*intermediate + heads*seq + 2*head_dim
# 12 h: the two RMSNorms' inputs and intermediates, the residual sums, q, RoPE's rotated copies, the attention
# output; 2 kv_dim: k and v (grouped-query attention repeats no copies of them); 3 I: gate, up and their SwiGLU
# product; heads*seq: the softmax of the attention scores (the scores themselves are freed); 2 head_dim: the
# rows of RoPE's cos/sin tables. Under tensor parallelism the residual stream and the norms (REPLICATED_H*h of
# the 12 h) stay whole on every rank, the rest is split (sequence parallelism splits those too).
# A family with another block (a non-gated MLP, LayerNorm with biases) is approximated by the same count.
KEPT_H, KEPT_I, REPLICATED_H = 12, 3, 8
# Outside the layers, per token: the embedding output (first pipeline stage) and the final norm's kept tensors
# (last stage), 3 h together, then the logits.
MODEL_H = 3
# With full recompute a layer keeps only its input (h per token; measured 0.85 h on SmolLM2) and rebuilds its
# activations one layer at a time during backward.
LOSS_BYTES = 4  # the loss (softmax, log-probabilities) is computed in float32 whatever the model's dtype
# On CPU the measured figure is peak RSS, which holds more than the tensors: the process's own working memory
# (Trainer, data, tokenizer, gloo: 0.035-0.045 GiB above the tensors for the tiny model over the layouts) and what
# the C heap keeps of the checkpoint's host arrays after loading (freed, but not given back to the system, and
# reused only in part): SmolLM2 (0.50 GiB of float32 weights), RSS above paddle's allocated-tensor peak at the
# run's peak: 0.13-0.47 GiB over single-process full/LoRA SFT/DPO with and without recompute, 0.40 right after
# loading; CPU_LOAD_LEFTOVER of the arrays is the middle of that range (bench/plan.py's rows, bench/README.md).
# Counted for device=cpu only: a GPU's max_memory_allocated sees the tensors alone.
CPU_PROCESS_GIB, CPU_LOAD_LEFTOVER = 0.036, 0.6
# llmx's fused loss (model.fused_ops auto/on, float32, one tensor/pipeline rank: llmx.engine.model applies the kernels
# there only; "auto" is counted as built) never holds the [tokens, vocab] logits: one chunk of logits
# (llmx.loss_chunks, the op's own rule), overwritten by its gradient, and the hidden states' gradient (h per token).


def fused_loss_bytes(tokens: int, vocab: int, h: int) -> float:
    """What llmx's fused linear cross-entropy holds at once, in bytes (float32 only)."""
    rows = ce_chunk_rows(tokens, vocab)
    return (min(rows, tokens) * vocab + tokens * h) * LOSS_BYTES

STAGE_MODELS = {  # runner -> the models a stage holds besides the one it trains (see extra_models)
    "dpo": ("reference",), "kto": ("reference",), "grpo": ("reference",), "ppo": ("critic", "reference", "reward"),
}


def _reference_free(stage: DictConfig) -> bool:
    if stage.runner != "dpo":  # KTO and GRPO always keep their reference
        return False
    from llmx.align.options import reference_free  # paddle-free: the loss names and their rules

    return reference_free(stage)


def _seq_length(stage: DictConfig) -> Optional[int]:
    seq = OmegaConf.select(stage, "data.max_length") or OmegaConf.select(stage, "data.seq_length")
    if seq is None and OmegaConf.select(stage, "rollout.max_new_tokens") is not None:  # RL: prompt + sampled answer
        seq = stage.data.max_prompt_length + stage.rollout.max_new_tokens
    return seq


def _shapes(family_name: str, hp: Dict[str, Any]) -> Dict[str, int]:
    fam = family(family_name)
    h = hp["hidden_size"]
    heads = hp[fam.heads]
    kv = (hp.get(fam.kv_heads) if fam.kv_heads else None) or heads
    head_dim = hp.get("head_dim") or h // heads
    inner = hp.get("intermediate_size") or hp.get("ffn_hidden_size") or hp.get("inner_hidden_size") or 4 * h
    return {"h": h, "heads": heads, "kv_dim": kv * head_dim, "head_dim": head_dim, "inner": inner,
            "vocab": hp[fam.vocab]}


def adapter_params(dims: Dict[str, int], layers: int, rank: int) -> int:
    """LoRA's A and B on every projection of a layer (q, k, v, o, gate, up, down): rank*(in + out) each. Other
    adapters (prefix, LoKr, VeRA, ReFT) train fewer; this count bounds them."""
    h, kv, inner = dims["h"], dims["kv_dim"], dims["inner"]
    return rank * layers * (9 * h + 2 * kv + 3 * inner)


def layer_activations(dims: Dict[str, int], seq: int, tp: int, sequence_parallel: bool) -> float:
    """Elements one decoder layer keeps per token for backward (KEPT_H etc. above), on one tensor-parallel rank."""
    h = dims["h"]
    split = ((KEPT_H - REPLICATED_H) * h + 2 * dims["kv_dim"] + KEPT_I * dims["inner"] + dims["heads"] * seq
             + 2 * dims["head_dim"])
    whole = REPLICATED_H * h
    return (whole + split) / tp if sequence_parallel else whole + split / tp


def extra_models(runner: str, reference_free: bool, adapters: bool) -> Dict[str, str]:
    """The models a stage keeps besides the one it trains, and how: "frozen" (parameters only) or "trained"
    (parameters, gradients, optimizer states). DPO/KTO/GRPO keep a frozen reference (none with adapters: the
    reference is the base with the adapters switched off; none for reference-free losses); PPO also its reward
    model (frozen) and a critic initialised from it (trained, like the actor)."""
    out: Dict[str, str] = {}
    for name in STAGE_MODELS.get(runner, ()):
        if name == "reference" and (adapters or reference_free):
            continue
        out[name] = "trained" if name == "critic" else "frozen"
    return out


def estimate(cfg: DictConfig, device: Optional[str] = None) -> Dict[str, Any]:
    """The per-device memory of `cfg`'s training stage on its layout (busiest device, and each pipeline stage).
    `device`: "cpu" adds the CPU process's own working memory (CPU_PROCESS_GIB); default cfg.device."""
    m, p, stage = cfg.model, cfg.parallel, cfg.stage
    hp = hyperparameters(m.family, model_hparams(m))
    params = count_params(m.family, model_hparams(m))
    seq = _seq_length(stage)
    if seq is None or OmegaConf.select(stage, "train") is None:
        raise ConfigError(f"stage.runner={stage.runner!r}: plan needs a training stage (stage.data.max_length "
                          "or stage.data.seq_length, and stage.train)")
    b = batching(stage.train.batch_size, stage.train.grad_accum, Layout.of(p))
    batch, accum = b.micro_batch, b.accum
    half = m.dtype in ("bfloat16", "float16")
    width = 2 if half else 4  # bytes per parameter, gradient and activation element
    dims = _shapes(m.family, hp)
    peft = OmegaConf.select(stage, "peft.method") or "none"
    adapters = peft != "none"
    recompute = bool(OmegaConf.select(stage, "train.recompute"))
    on_cpu = (device or cfg.get("device", "auto")) == "cpu"
    fused_loss = m.fused_ops != "off" and not half and p.tp * p.pp == 1

    # ZeRO over the sharding group: stage 1 shards the optimizer states, stage 2 also the gradients,
    # stage 3 also the parameters. Data parallelism (dp) replicates everything.
    shards = p.sharding if p.sharding_stage > 0 else 1

    def sharded(from_stage: int) -> int:
        return shards if p.sharding_stage >= from_stage else 1

    # 1F1B pipeline: the first stage holds the activations of min(pp, micro-batches) micro-batches before its
    # first backward, stage i min(pp - i, ...); the interleaved schedule (vpp > 1) holds (1 + (pp-1)/(pp*vpp))
    # times that (Korthikanti et al. 2022, 4.2.3).
    def in_flight(i: int) -> float:
        n = 1.0 if p.pp == 1 else float(min(p.pp - i, accum))
        if p.pp > 1 and p.vpp > 1 and accum >= p.pp:
            n *= 1 + (p.pp - 1) / (p.pp * p.vpp)
        return n

    tokens = batch * seq
    layers_here = params.layers // p.pp
    sp = bool(p.sequence_parallel) and p.tp > 1
    per_layer = layer_activations(dims, seq, p.tp, sp) * width

    def device_terms(i: int, writer: bool = True) -> Dict[str, float]:
        first, last = i == 0, i == p.pp - 1
        # Parameters: decoder layers split evenly over the pp stages; the input side (embeddings) on the first
        # stage, the output side (final norm + lm_head) on the last; with pp=1 one device holds all (a tied
        # embedding once). Tensor parallelism splits every layer's matrices and the vocabulary by tp; dividing
        # everything by tp slightly undercounts what TP replicates (norm weights, biases, the MoE router).
        ends = (params.embed + params.head - params.shared if p.pp == 1
                else (params.embed if first else 0) + (params.head if last else 0))
        here = (layers_here * params.layer + params.other_layers // p.pp + ends) / p.tp
        trained = adapter_params(dims, layers_here, stage.peft.lora_r) / p.tp if adapters else here
        # AdamW: two fp32 moments per trained parameter, plus an fp32 master copy of the weights when the model
        # trains in bf16/fp16 (PaddleNLP's O2 mixed precision); gradients have the parameters' dtype.
        param_b = here * width / sharded(3)
        grad_b = trained * width / sharded(2)
        opt_b = trained * (8 + (4 if half else 0)) / sharded(1)
        # A tied head loaded from a checkpoint: PaddleNLP's from_pretrained builds lm_head's own weight before
        # tying it to the embedding and that tensor stays allocated (SmolLM2: 0.618 GiB allocated after the build,
        # 0.501 of parameters; while building, one more such tensor briefly: peak 0.724). Per model copy. (A
        # pipeline's stages share the embedding through SharedLayerDesc instead: not seen under pp2.)
        head_b = dims["vocab"] * dims["h"] / p.tp * width if (params.shared and m.name_or_path and p.pp == 1) else 0.0
        flight = in_flight(i)
        model_side = ((1 if first else 0) + (MODEL_H - 1 if last else 0)) * dims["h"] * width
        # The logits over the vocabulary (split by tp) in the model's dtype, and the loss's float32 softmax
        # (plus a float32 copy of 16-bit logits); at backward their gradient takes the softmax's place.
        logits = (dims["vocab"] / p.tp * (width + LOSS_BYTES + (LOSS_BYTES if half else 0))) if last else 0.0
        if fused_loss and last:
            logits = fused_loss_bytes(tokens, dims["vocab"], dims["h"]) / tokens
        acts = tokens * (layers_here * per_layer * flight + model_side + logits)
        layer_inputs = dims["h"] / (p.tp if sp else 1) * width
        acts_rc = tokens * (layers_here * layer_inputs * flight + per_layer + model_side + logits)
        extra, models, trained_models = 0.0, 1, 1
        for how in extra_models(stage.runner, _reference_free(stage), adapters).values():
            extra += here * width / sharded(3) + head_b + ((grad_b + opt_b) if how == "trained" else 0.0)
            models, trained_models = models + 1, trained_models + (how == "trained")
        if stage.runner in ("rm", "ppo") and last:  # the score head: h -> 1 (per model that has one)
            extra += dims["h"] * width
        states = param_b + head_b + grad_b + opt_b + extra
        # Three moments can be the peak (SmolLM2, 2 x 128 tokens, measured with paddle's allocated-memory stat
        # around each phase): a training step (the states and the activations); saving a checkpoint, where
        # PaddleNLP copies the optimizer's state dict (nested_copy) before writing it (SmolLM2's moments, 1.002
        # GiB: 2.122 -> 3.124; the peak for short rows; every run saves at least its final checkpoint); and, on
        # CPU, loading, where the checkpoint's weights are host arrays beside the model being built (the other
        # models already built; LoRA's peak on SmolLM2: 1.27 GiB above the baseline, 0.50 of them the arrays).
        save = states + opt_b * trained_models
        # With more than one process PaddleNLP's unified checkpoint also copies the model's weights it writes (a tied
        # head as its own tensor) on the ranks that write (dp2, SmolLM2: rank 0's allocated peak 3.836 GiB against one
        # process's 3.124: + 0.618 + 0.105): the ranks of data-parallel rank 0 (`writer`; rank 1 under dp2 peaked
        # at 3.504 RSS against rank 0's 4.065). A pipeline's stages and sharding's ranks write theirs without it (pp2,
        # sharding stage 1 on SmolLM2).
        if writer and p.dp * p.tp > 1 and p.pp == 1 and p.sharding == 1:
            save += param_b + head_b + (params.shared * width / p.tp if params.shared and last else 0.0)
        # the host arrays: a checkpoint's weights as read (this rank's part), or a random init's full state on its
        # way to the split under tp/pp (llmx.engine.model)
        host = here * width if m.name_or_path else (params.total * width if p.tp * p.pp > 1 else 0.0)
        load = (param_b + head_b) * models + head_b + (host if on_cpu else 0.0)

        def peak(train: float) -> Tuple[float, float]:
            """(the peak, what of it is the CPU process's): after loading, the heap keeps part of the host arrays."""
            if not on_cpu:
                return max(train, save, load), 0.0
            left = CPU_PROCESS_GIB * GIB + CPU_LOAD_LEFTOVER * host
            tensors, process = max([(train, left), (save, left), (load, CPU_PROCESS_GIB * GIB)], key=sum)
            return tensors + process, process

        (total, process), (total_rc, process_rc) = peak(states + acts), peak(states + acts_rc)
        return {"parameters": param_b + head_b, "gradients": grad_b, "optimizer": opt_b, "extra_models": extra,
                "activations": acts, "activations_recompute": acts_rc, "logits": tokens * logits,
                "checkpoint_save": save, "loading": load, "process": process, "process_recompute": process_rc,
                "total": total, "total_recompute": total_rc, "parameters_here": here}

    stages = [device_terms(i) for i in range(p.pp)]
    busiest = max(stages, key=lambda t: t["total_recompute" if recompute else "total"])
    gib = {k: v / GIB for k, v in busiest.items() if k != "parameters_here"}
    memory = cfg.get("device_memory_gb")
    return {
        "model": {"family": m.family, "size": m.size, "dtype": m.dtype, "parameters": params.total,
                  "active_parameters": params.active, "parameters_per_device": round(busiest["parameters_here"])},
        "layout": {"dp": p.dp, "tp": p.tp, "pp": p.pp, "vpp": p.vpp, "sharding": p.sharding,
                   "sharding_stage": p.sharding_stage, "sequence_parallel": bool(p.sequence_parallel),
                   "devices": p.dp * p.tp * p.pp * p.sharding},
        "batch": {"micro_batch": batch, "seq_length": seq, "micro_batches_in_flight": in_flight(0)},
        "per_device_gib": gib,
        # what each pipeline stage's devices hold: those that write the checkpoint, and the other data-parallel
        # ranks (summary.json sets each rank's measured peak beside its own figure)
        "per_pipeline_stage_gib": [t["total_recompute" if recompute else "total"] / GIB for t in stages],
        "per_pipeline_stage_gib_not_writing": [t["total_recompute" if recompute else "total"] / GIB
                                               for t in (device_terms(i, writer=False) for i in range(p.pp))],
        "recompute": recompute,
        "extra_models": extra_models(stage.runner, _reference_free(stage), adapters),
        "device_memory_gb": memory,
        "fits": verdict(gib["total"], gib["total_recompute"], memory),
        "peft": peft,
    }


def verdict(total: float, total_recompute: float, memory: Optional[float]) -> str:
    if memory is None:
        return f"fits: unknown (give device_memory_gb=...; needs {total:.1f} GiB, with recompute: {total_recompute:.1f} GiB)"
    if total <= memory:
        return f"fits: yes ({total:.1f} GiB of {memory:g} GiB, with recompute: {total_recompute:.1f} GiB)"
    if total_recompute <= memory:
        return f"fits: only with full recompute ({total_recompute:.1f} GiB of {memory:g} GiB, without: {total:.1f} GiB)"
    return f"fits: no ({total:.1f} GiB of {memory:g} GiB, with recompute: {total_recompute:.1f} GiB)"


def render(plan: Dict[str, Any]) -> str:
    m, lay, bt, g = plan["model"], plan["layout"], plan["batch"], plan["per_device_gib"]
    mem = plan["device_memory_gb"]
    rows = [("parameters", g["parameters"]), ("gradients", g["gradients"]), ("optimizer states (AdamW)", g["optimizer"]),
            ("extra models", g["extra_models"]), ("logits (in activations)", g["logits"]),
            ("activations, no recompute", g["activations"]), ("activations, full recompute", g["activations_recompute"]),
            ("saving a checkpoint", g["checkpoint_save"]), ("loading (CPU: with host arrays)", g["loading"]),
            ("CPU process and heap", g["process"]),
            ("total, no recompute", g["total"]), ("total, full recompute", g["total_recompute"])]
    active = f", {m['active_parameters'] / 1e9:.3g}B active per token" if m["active_parameters"] != m["parameters"] else ""
    lines = [f"plan: {m['family']} {m['size']} ({m['parameters'] / 1e9:.3g}B parameters{active}, {m['dtype']}), "
             f"tp={lay['tp']} pp={lay['pp']} dp={lay['dp']} sharding={lay['sharding']} "
             f"(stage {lay['sharding_stage']}) on {lay['devices']} devices",
             f"busiest device: {m['parameters_per_device'] / 1e9:.3g}B parameters, micro-batch {bt['micro_batch']} x "
             f"{bt['seq_length']} tokens, {bt['micro_batches_in_flight']:g} in flight",
             "", f"  {'per device':<30}{'GiB':>9}"]
    lines += [f"  {name:<30}{value:9.2f}" for name, value in rows]
    lines.append(f"  {'device memory':<30}{mem:9.2f}" if mem is not None else f"  {'device memory':<30}{'unknown':>9}")
    if plan["extra_models"]:
        lines.append("extra models: " + ", ".join(f"{k} ({v})" for k, v in plan["extra_models"].items()))
    lines.append(plan["fits"])
    return "\n".join(lines)


def print_plan(cfg: DictConfig, fmt: str = "text") -> Dict[str, Any]:
    """Validate `cfg`, then print its plan (launch.py's `plan=true` lands here). A plan is for the
    machines the layout will run on, not this one: what only this machine's devices rule out is not
    checked."""
    cfg.plan = True
    validate(cfg)
    plan = estimate(cfg)
    print(json.dumps(plan, indent=2) if fmt == "json" else render(plan), flush=True)
    return plan


# ------------------------------------------------------------------ command line

PLAN_KEYS = ("plan", "device_memory_gb")  # RunConfig fields: `+key=` (append) becomes `key=` (override)


def compose_config(overrides: List[str]) -> DictConfig:
    """Hydra's compose API over llmx's conf/, with launch.py's overrides."""
    from hydra import compose, initialize_config_dir

    overrides = [o[1:] if o.startswith("+") and not o.startswith("++") and o[1:].split("=", 1)[0] in PLAN_KEYS
                 else o for o in overrides]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmx plan", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py "
                        "(e.g. model=qwen2 model.size=7b parallel=tp4pp2 device_memory_gb=80)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_intermixed_args(argv)
    from llmx.compat.hydra import config_error_line

    try:
        print_plan(compose_config(args.overrides), args.format)
    except Exception as ex:  # noqa: BLE001 - Hydra's, OmegaConf's and our config errors become one line
        line = config_error_line(ex)
        if line is None:
            raise
        print(f"llmx: {line}", file=sys.stderr)
        return 2
    return 0
