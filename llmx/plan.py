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
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from llmx.errors import ConfigError
from llmx.schema import CONF_DIR, model_hparams
from llmx.stages import register_configs, validate
from llmx.families import Params, family
from llmx.layout import Layout, batching

GIB = 2**30

# ------------------------------------------------------------------ parameter count

def hyperparameters(family_name: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """`given` (a size, or a config.json) over the family's PaddleNLP defaults (llmx.families)."""
    return family(family_name).hyperparameters(given)


def count_params(family_name: str, given: Dict[str, Any]) -> Params:
    """The parameter count of `given`, by the family's formula (its module in llmx.families)."""
    return family(family_name).params(given)


# ------------------------------------------------------------------ memory per device


def estimate(cfg: DictConfig) -> Dict[str, Any]:
    m, p, stage = cfg.model, cfg.parallel, cfg.stage
    hp = hyperparameters(m.family, model_hparams(m))
    params = count_params(m.family, model_hparams(m))
    seq = OmegaConf.select(stage, "data.max_length") or OmegaConf.select(stage, "data.seq_length")
    if seq is None or OmegaConf.select(stage, "train") is None:
        raise ConfigError(f"stage.runner={stage.runner!r}: plan needs a training stage (stage.data.max_length "
                          "or stage.data.seq_length, and stage.train)")
    b = batching(stage.train.batch_size, stage.train.grad_accum, Layout.of(p))
    batch, accum = b.micro_batch, b.accum
    half = m.dtype in ("bfloat16", "float16")
    width = 2 if half else 4  # bytes per parameter, gradient and activation element

    # Parameters on the busiest device. Decoder layers split evenly over the pp stages; the input side
    # (embeddings) sits on the first stage, the output side (final norm + lm_head) on the last; with pp=1 one
    # device holds all (a tied embedding once). Tensor parallelism splits every layer's matrices and the
    # vocabulary of the embedding and the lm_head by tp; we divide everything by tp, which slightly
    # undercounts what TP replicates (norm weights, row-parallel biases, position embeddings, the MoE router).
    ends = params.embed + params.head - params.shared if p.pp == 1 else max(params.embed, params.head)
    per_device = (params.layers // p.pp * params.layer + params.other_layers // p.pp + ends) / p.tp

    # ZeRO over the sharding group: stage 1 shards the optimizer states, stage 2 also the gradients,
    # stage 3 also the parameters. Data parallelism (dp) replicates everything.
    shards = p.sharding if p.sharding_stage > 0 else 1

    def sharded(from_stage: int) -> int:
        return shards if p.sharding_stage >= from_stage else 1

    param_bytes = per_device * width / sharded(3)
    grad_bytes = per_device * width / sharded(2)  # gradients have the parameters' dtype
    # AdamW: two fp32 moments per parameter, plus an fp32 master copy of the weights when the model trains in
    # bf16/fp16 (PaddleNLP's O2 mixed precision). The beta-power scalars are negligible.
    optimizer_bytes = per_device * (8 + (4 if half else 0)) / sharded(1)

    # Activations per micro-batch and layer, after Korthikanti et al. 2022 ("Reducing Activation Recomputation
    # in Large Transformer Models", eqs. 1-2), in bytes for 16-bit activations: s*b*h*(34 + 5*a*s/h) on one device
    # (34: the inputs kept for backward by the layer norms, q/k/v/out projections and MLP, plus 1-byte dropout
    # masks; 5*a*s/h: the a*s*s attention scores, softmax output and its dropout mask). Tensor parallelism
    # splits all but the 10*s*b*h kept around the layer norms and dropouts: s*b*h*(10 + 24/t + 5*a*s/(h*t));
    # sequence parallelism splits those too: s*b*h*(34 + 5*a*s/h)/t. The formula is for the GPT-3 block (a 4h
    # MLP, dropout on); for llama-style blocks (gated MLP, no dropout) it is an approximation, and flash
    # attention (GPU) keeps no attention scores, so "no recompute" is an upper bound there.
    s, b, h, t = seq, batch, hp["hidden_size"], p.tp
    a = hp[family(m.family).heads]
    sbh = s * b * h
    scores = 5 * a * s / h
    if p.sequence_parallel and t > 1:
        layer_acts = sbh * (34 + scores) / t
    else:
        layer_acts = sbh * (10 + (24 + scores) / t)
    # Full recompute keeps only each layer's input (2*s*b*h bytes; split by t under sequence parallelism) and
    # rebuilds one layer's activations at a time during backward.
    layer_input = 2 * sbh / (t if p.sequence_parallel and t > 1 else 1)
    scale = width / 2  # the formula counts 2-byte activations; float32 doubles them
    layers_here = params.layers // p.pp
    # 1F1B pipeline: the first stage holds the activations of min(pp, micro-batches) micro-batches before its
    # first backward; the interleaved schedule (vpp > 1) holds (1 + (pp-1)/(pp*vpp)) times that (paper, 4.2.3).
    in_flight = 1.0 if p.pp == 1 else float(min(p.pp, accum))
    if p.pp > 1 and p.vpp > 1 and accum >= p.pp:
        in_flight *= 1 + (p.pp - 1) / (p.pp * p.vpp)
    acts = layer_acts * layers_here * in_flight * scale
    acts_recompute = (layer_input * layers_here * in_flight + layer_acts) * scale

    states = param_bytes + grad_bytes + optimizer_bytes
    gib = {"parameters": param_bytes / GIB, "gradients": grad_bytes / GIB, "optimizer": optimizer_bytes / GIB,
           "activations": acts / GIB, "activations_recompute": acts_recompute / GIB,
           "total": (states + acts) / GIB, "total_recompute": (states + acts_recompute) / GIB}
    memory = cfg.get("device_memory_gb")
    return {
        "model": {"family": m.family, "size": m.size, "dtype": m.dtype, "parameters": params.total,
                  "active_parameters": params.active, "parameters_per_device": round(per_device)},
        "layout": {"dp": p.dp, "tp": p.tp, "pp": p.pp, "vpp": p.vpp, "sharding": p.sharding,
                   "sharding_stage": p.sharding_stage, "sequence_parallel": bool(p.sequence_parallel),
                   "devices": p.dp * p.tp * p.pp * p.sharding},
        "batch": {"micro_batch": batch, "seq_length": seq, "micro_batches_in_flight": in_flight},
        "per_device_gib": gib,
        "device_memory_gb": memory,
        "fits": verdict(gib["total"], gib["total_recompute"], memory),
        "peft": OmegaConf.select(stage, "peft.method") or "none",
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
            ("activations, no recompute", g["activations"]), ("activations, full recompute", g["activations_recompute"]),
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
    if plan["peft"] != "none":
        lines.append(f"note: stage.peft.method={plan['peft']} trains adapters only; gradients and optimizer "
                     "states above are for full-parameter training (an upper bound)")
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
