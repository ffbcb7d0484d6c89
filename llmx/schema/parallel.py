"""The `parallel` group: the layout's degrees, and the layouts a model and a device can run."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from llmx.errors import ConfigError
from llmx.schema.checks import positive, require
from llmx.schema.model import model_dim, model_family, model_hparams, quantized


@dataclass
class ParallelConfig:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    sharding: int = 1  # sharding parallel degree
    sharding_stage: int = 0  # 0 = off, 1/2/3 = ZeRO stage
    vpp: int = 1  # virtual pipeline stages per rank
    sequence_parallel: bool = False


def launched_processes() -> Optional[int]:
    """The world size set by a launcher this process runs under (paddle.distributed.launch
    sets PADDLE_TRAINERS_NUM), or None for a plain shell, where llmx starts the processes itself."""
    n = os.environ.get("PADDLE_TRAINERS_NUM")
    return int(n) if n else None


def validate_parallel(cfg: DictConfig) -> None:
    """Layouts: world = dp*tp*pp*sharding processes. From a plain shell llmx starts that many
    itself (CPU: any number, over gloo; GPU: at most the visible GPUs, checked by the launcher);
    under a launcher the world it set must match."""
    from llmx.layout import Layout, batching_problem

    p, m = cfg.parallel, cfg.model
    for key in ("dp", "tp", "pp", "sharding", "vpp"):
        positive(f"parallel.{key}", p[key])
    require(p.sharding_stage in (0, 1, 2, 3), "parallel.sharding_stage", p.sharding_stage, "allowed: 0 (off), 1, 2, 3")
    require(p.sharding == 1 or p.sharding_stage > 0, "parallel.sharding", p.sharding,
            "needs parallel.sharding_stage 1, 2 or 3 (0 turns sharding off)")
    require(p.sharding_stage == 0 or p.sharding > 1, "parallel.sharding_stage", p.sharding_stage,
            "needs parallel.sharding >= 2 (the sharding degree)")
    layout = Layout.of(p)
    launched = launched_processes()
    if launched is not None and launched != layout.world:
        raise ConfigError(f"parallel: dp*tp*pp*sharding = {layout.world} but {launched} processes ({layout.describe()})")
    fam = model_family(m)
    require(p.tp == 1 or not fam.no_tensor_parallel, "parallel.tp", p.tp,
            f"model family {m.family} cannot be split over tensor-parallel ranks: {fam.no_tensor_parallel}")
    if p.pp > 1:
        require(fam.pipeline_class is not None, "parallel.pp", p.pp,
                f"model family {m.family} has no pipeline class in PaddleNLP")
        require(not fam.pipeline_ties or model_dim(m, "tie_word_embeddings") is not False, "parallel.pp", p.pp,
                f"model family {m.family}'s pipeline class in PaddleNLP ties the head to the embedding whatever "
                "the config says: an untied model (tie_word_embeddings=false) runs with parallel.pp=1")
        require(not model_dim(m, "output_router_logits"), "parallel.pp", p.pp,
                "the router's auxiliary loss (output_router_logits=true) is computed over the whole model's "
                "forward, which a pipeline never runs: it trains with parallel.pp=1")
        require(p.sharding_stage not in (2, 3), "parallel.sharding_stage", p.sharding_stage,
                "pp>1 needs sharding stage1 (Paddle has no pipeline with sharding stage 2/3)")
    require(p.vpp == 1 or p.pp > 2, "parallel.vpp", p.vpp,
            "virtual pipeline stages need parallel.pp > 2 (Paddle's interleaved schedule asserts it)")
    require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel", True, "needs parallel.tp > 1")
    require(not p.sequence_parallel or not fam.no_sequence_parallel, "parallel.sequence_parallel", True,
            f"model family {m.family}: {fam.no_sequence_parallel}")
    require(p.tp == 1 and p.pp == 1 or not quantized(m), "model.name_or_path", m.name_or_path,
            "is a quantized checkpoint: it is dequantized per layer in one process; splitting it over tensor or "
            "pipeline ranks is not implemented (use parallel=single)")
    if m.size in m.sizes or m.name_or_path:
        dims = fam.dims(model_hparams(m))
        for key, what in (("heads", "attention heads"), ("kv_heads", "KV heads"), ("vocab", "vocab size")):
            n = dims[key]
            require(n is None or n % p.tp == 0, "parallel.tp", p.tp, f"must divide the model's {what} ({n})")
        n = dims["layers"]
        require(n is None or n % (p.pp * p.vpp) == 0, "parallel.pp", p.pp,
                f"pp*vpp = {p.pp * p.vpp} must divide the model's layers ({n})")
    train = OmegaConf.select(cfg, "stage.train")
    if train is not None and "batch_size" in train and "grad_accum" in train:
        problem = batching_problem(train.batch_size, train.grad_accum, layout)
        require(problem is None, "parallel", f"dp*sharding={layout.replicas}", problem or "")
    if layout.world > 1 and (p.vpp > 1 or p.sharding_stage == 3) and not cfg.plan and on_cpu(cfg.device):
        # Checked on these machines (paddle 3.3.1 CPU over gloo): the interleaved schedule's p2p exchanges
        # deadlock on gloo's synchronous send/recv; GroupShardedStage3 keeps parameter shards on CUDA places.
        require(p.vpp == 1, "parallel.vpp", p.vpp, "virtual pipeline stages do not run on CPU: the interleaved "
                "schedule's exchanges deadlock over gloo (run vpp > 1 on GPUs; on CPU use parallel.vpp=1)")
        require(p.sharding_stage != 3, "parallel.sharding_stage", 3, "sharding stage 3 does not run on CPU: Paddle's "
                "GroupShardedStage3 keeps parameter shards on GPUs (on CPU use sharding stage 1 or 2)")


def on_cpu(device: str) -> bool:
    """Will the ranks run on CPU? (device=cpu, or auto without a GPU this paddle build can use.)"""
    from llmx.devices import visible_gpus

    return device == "cpu" or (device == "auto" and not visible_gpus())

