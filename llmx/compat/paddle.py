"""Paddle patches (found in paddlepaddle 3.3.1, the CPU wheel): hybrid parallelism on CPU over gloo.

Paddle's tensor, pipeline and sharding parallelism assume GPUs; these patches let every layout
run on CPU (measured on these machines, see DESIGN.md "4D parallel on CPU"). `install()`
applies them only when a run is multi-process on CPU (llmx.engine.distributed calls it before
fleet.init). Each patch below says the problem, and when it can go; tests/quick/test_compat.py
fails when the upstream behaviour a patch relies on changes.

- `_patch_process_group`: gloo rejects every `*_on_calc_stream` collective and has no
  reduce_scatter or "partial" p2p: they are redirected to the synchronous collectives gloo has
  (reduce_scatter = all_reduce + slice). Can go when gloo's ProcessGroup has them.
- `_patch_gloo_subgroups`: gloo groups made at the same time rendezvous under the same store
  keys and connect the wrong ranks: each group gets a store of its own. Can go when paddle
  names the group in its gloo store keys.
- `_patch_mp_ops`: the model-parallel ops (c_identity, c_split, c_concat, mp_allreduce_sum,
  c_embedding, c_softmax_with_cross_entropy) have no CPU kernels: they become PyLayers over
  those collectives, patched where they are looked up (mp_layers calls them through `mp_ops`,
  PaddleNLP's Llama/Qwen2/GPT through `paddle.distributed.collective`); c_embedding becomes a
  plain masked embedding (its CPU backward is garbage in float64). Can go when the ops have CPU kernels.
- `_patch_fleet`: TensorParallel's `broadcast_input_data` asserts a GPU/XPU place;
  PipelineLayer reads `ParallelEnv().device_id`, which is never set on CPU; sharding stage 2
  (`group_sharded_parallel(level="os_g")`) asserts a GPU, and its ParamStorage does
  `param.cpu(); param._clear_data()`, which on CPU wipes the param itself (`.cpu()` returns the
  same tensor). Can go when fleet's wrappers accept a CPU place.
DP and sharding stage 1 run as they are.

On every device (not only CPU), for a pipeline model:
- `count_shared_weights_once(model)`: the global gradient norm (HybridParallelClipGrad) skips a
  pipeline-shared parameter (SharedLayerDesc: a tied embedding and head, held by the first and the
  last stage, its gradient all-reduced between them) where `is_firstly_shared` is False, but
  PipelineLayer sets that flag by comparing parameter *names* (`embedding_0.w_0`) with attribute
  names (`embedding_weight`), which never match: every holder counts the summed gradient, and
  clipping scales by a norm that is too large (llama tiny, tied, pp2, lr 5e-2: 1% off one process
  at step 3). Marks the shared parameter of every stage but the group's first. Can go when
  `_synchronize_shared_weights` looks the parameter up by its attribute.
- `restrict_unpickling()`: `paddle.load` (and so every PaddleNLP loader of `.pdparams`, `.pdopt`, RNG
  and scheduler state) calls `pickle.load`, which runs whatever a file's pickle names. It is routed
  through llmx.safe_pickle, which builds data only. Can go when paddle.load has a data-only mode
  (as torch.load's `weights_only`). `COUNTERS` counts every patched call per kind, and each
rank writes them to `<run dir>/cpu_parallel_counters.rank<N>.json` at exit, so tests can prove
that the parallel path really ran (mp collectives for tp, send/recv for pp, ...).
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import pickle
import socket
import types
from pathlib import Path

import paddle
import paddle.distributed as dist
import paddle.nn.functional as F
from paddle.autograd import PyLayer
from paddle.base import core

from llmx import safe_pickle

COUNTERS: collections.Counter = collections.Counter()
_installed = False


def _group(group):
    from paddle.distributed import collective

    return collective._get_default_group() if group is None else group


# ---------------------------------------------------------------- process groups
# Every Python-level collective ends in a ProcessGroup method; counting there covers
# them all (DataParallel's gradient all-reduce runs in C++ and is counted separately).
_COUNTED = ("all_reduce", "broadcast", "reduce", "send", "recv", "all_gather", "all_gather_into_tensor", "barrier")


def _counted(name, method):
    def wrapper(self, *args, **kwargs):
        COUNTERS[f"collective.{name}"] += 1
        return method(self, *args, **kwargs)

    return wrapper


def _sync(task):
    task.wait()
    return task


# gloo rejects `x_on_calc_stream(...)`: run the synchronous `x(..., sync_op=True)` instead.
_ON_CALC_STREAM = {
    "all_reduce": lambda self, tensor, op=dist.ReduceOp.SUM: _sync(self.all_reduce(tensor, op, True)),
    "broadcast": lambda self, tensor, src: _sync(self.broadcast(tensor, src, True)),
    "reduce": lambda self, tensor, dst, op=dist.ReduceOp.SUM: _sync(self.reduce(tensor, dst, op, True)),
    "send": lambda self, tensor, dst: _sync(self.send(tensor, dst, True)),
    "recv": lambda self, tensor, src: _sync(self.recv(tensor, src, True)),
    "all_gather_into_tensor": lambda self, out, inp: _sync(self.all_gather_into_tensor(out, inp, True)),
}


def _reduce_scatter_tensor(self, out, inp, op, sync_op=True):
    """gloo has no reduce_scatter: all-reduce a copy, keep this rank's chunk."""
    COUNTERS["collective.reduce_scatter"] += 1
    full = inp.clone()
    task = self.all_reduce(full, op, True)
    task.wait()
    chunk = full.shape[0] // self.size()
    paddle.assign(full[self.rank() * chunk:(self.rank() + 1) * chunk], out)
    return task


# With tp > 1 the pipeline sends 1/tp of each activation from each tp rank and all-gathers
# it on arrival ("partial" p2p, which gloo lacks). Sending the whole tensor and skipping the
# gather delivers the same tensor.
def _send_partial(self, tensor, dst, num=1, id=0, sync_op=True):
    COUNTERS["collective.send_partial_as_send"] += 1
    return self.send(tensor, dst, True)


def _recv_partial(self, tensor, src, num=1, id=0, sync_op=True):
    COUNTERS["collective.recv_partial_as_recv"] += 1
    return self.recv(tensor, src, True)


def _all_gather_partial(self, out, inp, num=1, id=0):
    return self.barrier()  # the tensor arrived whole


def _patch_process_group() -> None:
    """gloo's missing collectives (module docstring); counted per kind."""
    PG = core.ProcessGroup
    for name in _COUNTED:
        setattr(PG, name, _counted(name, getattr(PG, name)))
    for name, redirect in _ON_CALC_STREAM.items():
        setattr(PG, f"{name}_on_calc_stream", redirect)
    PG.send_partial = PG.send_partial_on_calc_stream = _send_partial
    PG.recv_partial = PG.recv_partial_on_calc_stream = _recv_partial
    PG.all_gather_partial = PG.all_gather_partial_on_calc_stream = _all_gather_partial
    PG.reduce_scatter_tensor = _reduce_scatter_tensor
    PG.reduce_scatter_tensor_on_calc_stream = lambda self, out, inp, op: _reduce_scatter_tensor(self, out, inp, op)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _patch_gloo_subgroups() -> None:
    """Each gloo group rendezvouses through a store with keys that do not name the group,
    so groups made at the same time (tp [0,1] and [2,3], pp [0,2] and [1,3] in a 4-process
    run) overwrite each other's addresses and connect the wrong ranks (connection refused
    or a timeout). Give every new group a TCPStore of its own, hosted by its first rank,
    whose address goes through the default store under a key that names the group."""
    from paddle.distributed import collective

    make = collective._new_process_group_impl

    def new_process_group(backend, store, rank, world_size, group_name, pg_options, group_id=0, **kwargs):
        if backend == "gloo" and group_id != 0:
            COUNTERS["gloo.group_store"] += 1
            key = f"llmx/gloo_group/{group_id}"
            if rank == 0:  # publish first: the master store waits for its workers while it is built
                host = os.environ.get("PADDLE_CURRENT_ENDPOINT", "127.0.0.1:0").rsplit(":", 1)[0]
                port = _free_port()
                store.set(key, f"{host}:{port}".encode())
                store = core.TCPStore(host, port, True, world_size)
            else:
                store.wait(key)
                host, port = bytes(store.get(key)).decode().rsplit(":", 1)
                store = core.TCPStore(host, int(port), False, world_size)
        return make(backend, store, rank, world_size, group_name, pg_options, group_id=group_id, **kwargs)

    collective._new_process_group_impl = new_process_group


# ------------------------------------------------------------ model-parallel ops
def _all_reduce(x, group, op=dist.ReduceOp.SUM):
    out = x.clone()
    dist.all_reduce(out, op=op, group=group)
    return out


def _all_gather_last(x, group):
    parts = []
    dist.all_gather(parts, x.contiguous(), group=group)
    return paddle.concat(parts, axis=-1)


def _own_slice_last(x, group):
    n = x.shape[-1] // group.nranks
    return x[..., group.rank * n:(group.rank + 1) * n].contiguous()


class _Identity(PyLayer):  # c_identity: copy forward, all-reduce the gradient
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return _all_reduce(dy, ctx.group)


class _AllReduce(PyLayer):  # mp_allreduce_sum: all-reduce forward, gradient passes through
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, dy):
        return dy


class _Concat(PyLayer):  # c_concat: gather the last axis, the gradient keeps this rank's slice
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_last(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _own_slice_last(dy, ctx.group)


class _Split(PyLayer):  # c_split: keep this rank's slice of the last axis, gather the gradient
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _own_slice_last(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _all_gather_last(dy, ctx.group)


def c_identity(tensor, group=None, skip_c_identity_dynamic=False):
    COUNTERS["mp.c_identity"] += 1
    return tensor if skip_c_identity_dynamic else _Identity.apply(tensor, _group(group))


def mp_allreduce(tensor, op=dist.ReduceOp.SUM, group=None, use_calc_stream=True, use_model_parallel=True,
                 skip_c_identity_dynamic=False):
    COUNTERS["mp.allreduce"] += 1
    return _AllReduce.apply(tensor, _group(group))


def c_concat(tensor, group=None):
    COUNTERS["mp.c_concat"] += 1
    return _Concat.apply(tensor, _group(group))


def c_split(tensor, group=None):
    COUNTERS["mp.c_split"] += 1
    return _Split.apply(tensor, _group(group))


def c_lookup_table(table, index, start_index=0, vocab_size=-1, name=None):
    """This rank's rows of a vocab-parallel embedding; ids outside them give zeros
    (the caller all-reduces). Plain ops, so autograd gives the right gradient in any dtype."""
    COUNTERS["mp.c_embedding"] += 1
    rows = table.shape[0]
    mine = (index >= start_index) & (index < start_index + rows)
    local = paddle.where(mine, index - start_index, paddle.zeros_like(index))
    return F.embedding(local, table) * mine.unsqueeze(-1).astype(table.dtype)


def c_softmax_with_cross_entropy(logits, label, group=None, return_softmax=False, ignore_index=-100):
    """Cross entropy over a vocab split across ranks: global max and sum-exp by all-reduce.
    The loss is the same on every rank, so sum-all-reduces pass gradients through unchanged
    (each rank's logits then get softmax - onehot for their own slice)."""
    COUNTERS["mp.c_softmax_with_cross_entropy"] += 1
    group = _group(group)
    if label.ndim == logits.ndim - 1:
        label = label.unsqueeze(-1)
    with paddle.no_grad():
        peak = _all_reduce(logits.max(axis=-1, keepdim=True), group, dist.ReduceOp.MAX)
    shifted = logits - peak
    exp = paddle.exp(shifted)
    sum_exp = _AllReduce.apply(exp.sum(axis=-1, keepdim=True), group)
    start = group.rank * logits.shape[-1]
    mine = (label >= start) & (label < start + logits.shape[-1])
    local = paddle.where(mine, label - start, paddle.zeros_like(label))
    picked = paddle.take_along_axis(shifted, local, axis=-1) * mine.astype(logits.dtype)
    loss = paddle.log(sum_exp) - _AllReduce.apply(picked, group)
    loss = paddle.where(label == ignore_index, paddle.zeros_like(loss), loss)
    return (loss, exp / sum_exp) if return_softmax else loss


def _patch_mp_ops() -> None:
    """The model-parallel ops without CPU kernels, replaced where paddle and PaddleNLP look them up."""
    from paddle.distributed import collective
    from paddle.distributed.fleet.layers.mpu import mp_ops

    ops = {"_c_identity": c_identity, "_mp_allreduce": mp_allreduce, "_c_concat": c_concat, "_c_split": c_split,
           "_c_lookup_table": c_lookup_table, "_c_softmax_with_cross_entropy": c_softmax_with_cross_entropy}
    for module in (mp_ops, collective):
        for name, fn in ops.items():
            setattr(module, name, fn)


# ---------------------------------------------------- fleet wrappers and sharding
def _broadcast_input_data(hcg, *inputs, **kwargs):
    """TensorParallel's input broadcast (from the mp group's first rank) without the GPU assert."""
    group, src = hcg.get_model_parallel_group(), hcg.get_model_parallel_group_src_rank()

    def visit(x):
        if isinstance(x, paddle.Tensor):
            COUNTERS["tp.broadcast_input"] += 1
            with paddle.no_grad():
                dist.broadcast(x, src=src, group=group)
        elif isinstance(x, (list, tuple)):
            for item in x:
                visit(item)
        elif isinstance(x, dict):
            for item in x.values():
                visit(item)

    visit(inputs)
    visit(kwargs)
    return inputs, kwargs


def _group_sharded_parallel(model, optimizer, level, scaler=None, group=None, offload=False, sync_buffers=False,
                            buffer_max_size=2**23, segment_size=2**20, sync_comm=False, dp_group=None,
                            exclude_layer=None):
    """paddle.distributed.sharding.group_sharded_parallel for stage 2 on CPU (its GPU assert aside,
    the same two wrappers, built for device "cpu")."""
    from paddle.distributed.fleet.meta_parallel.sharding.group_sharded_optimizer_stage2 import GroupShardedOptimizerStage2
    from paddle.distributed.fleet.meta_parallel.sharding.group_sharded_stage2 import GroupShardedStage2

    if level not in ("os", "os_g"):
        raise NotImplementedError(f"sharding level {level!r} (stage 3) is not supported on CPU")
    COUNTERS["sharding.stage2_wrap"] += 1
    # The optimizer wrapper parses a device index out of paddle.get_device() while it is
    # built ("cpu" has none; CPU tensors ignore it).
    get_device = paddle.get_device
    paddle.get_device = lambda: "cpu:0"
    try:
        optimizer = GroupShardedOptimizerStage2(params=optimizer._parameter_list, optim=optimizer, group=group,
                                                offload=offload, dp_group=dp_group, device="cpu")
    finally:
        paddle.get_device = get_device
    model = GroupShardedStage2(model, optimizer, group=group, sync_buffers=sync_buffers,
                               buffer_max_size=buffer_max_size, dp_group=dp_group, device="cpu")
    return model, optimizer, scaler


def _patch_fleet() -> None:
    """fleet's GPU-only wrappers (tensor-parallel input broadcast, pipeline device id, sharding stage 2)."""
    from paddle.distributed import sharding
    from paddle.distributed.fleet.meta_parallel import tensor_parallel
    from paddle.distributed.fleet.meta_parallel.sharding import group_sharded_optimizer_stage2, group_sharded_storage
    from paddle.distributed.parallel import ParallelEnv

    tensor_parallel.broadcast_input_data = _broadcast_input_data
    ParallelEnv.device_id = property(lambda self: getattr(self, "_device_id", 0))
    sharding.group_sharded_parallel = _group_sharded_parallel

    # Stage 2's optimizer asserts a CUDA/XPU build (through its module's `core`) ...
    class CoreOnCpu:
        def __getattr__(self, name):
            return (lambda: True) if name == "is_compiled_with_cuda" else getattr(core, name)

    group_sharded_optimizer_stage2.core = CoreOnCpu()
    # ... and its ParamStorage "converts to GPU" by `param.cpu(); param._clear_data()`, which on
    # CPU clears the param itself. Without the conversion the param is copied into the buffer.
    add_rank = group_sharded_storage.ParamStorage.add_rank_params

    def add_rank_params(self, trainable_params, param2align, convert_gpu=True):
        return add_rank(self, trainable_params, param2align, convert_gpu and self._device != "cpu")

    group_sharded_storage.ParamStorage.add_rank_params = add_rank_params

    forward = paddle.DataParallel.forward

    def dp_forward(self, *inputs, **kwargs):  # the C++ reducer all-reduces gradients after this backward
        if self.grad_need_sync:
            COUNTERS["dp.grad_sync_forward"] += 1
        return forward(self, *inputs, **kwargs)

    paddle.DataParallel.forward = dp_forward


# ----------------------------------------------------------------- pipeline-shared weights
def count_shared_weights_once(model) -> None:
    """Let the gradient norm count each pipeline-shared parameter once (module docstring): on the
    first rank of its shared group only. A no-op for a model that is not a PipelineLayer."""
    for comm in getattr(model, "shared_comm", {}).values():
        if model.global_rank != min(comm["ranks"]):
            for attr in comm["weight_attr"]:
                getattr(comm["layer"], attr).is_firstly_shared = False


# ------------------------------------------------------------------------ pickles
class _RestrictedPickleModule(types.ModuleType):
    """`pickle` as paddle.framework.io sees it: saving unchanged, loading through llmx.safe_pickle."""

    def __getattr__(self, name):
        return getattr(pickle, name)

    @staticmethod
    def load(file, **kwargs):
        return safe_pickle.load(file, **kwargs)

    @staticmethod
    def loads(data, **kwargs):
        return safe_pickle.loads(data, **kwargs)


def restrict_unpickling() -> None:
    """Route paddle.load's unpickling through llmx.safe_pickle (module docstring). Idempotent."""
    import paddle.framework.io as paddle_io

    if not isinstance(paddle_io.pickle, _RestrictedPickleModule):
        paddle_io.pickle = _RestrictedPickleModule("pickle")


# ------------------------------------------------------------------------ entry
def install(run_dir: str | Path, rank: int) -> None:
    """Apply every patch (once) and write this rank's counters into the run dir at exit."""
    global _installed
    if _installed:
        return
    _installed = True
    _patch_process_group()
    _patch_gloo_subgroups()
    _patch_mp_ops()
    _patch_fleet()
    global _COUNTERS_PATH
    _COUNTERS_PATH = Path(run_dir) / f"cpu_parallel_counters.rank{rank}.json"
    atexit.register(write_counters)


_COUNTERS_PATH: Path | None = None


def write_counters() -> None:
    """This rank's counters into the run dir (at exit, or explicitly by a rank that skips teardown)."""
    if _COUNTERS_PATH is not None:
        _COUNTERS_PATH.write_text(json.dumps(dict(sorted(COUNTERS.items())), indent=1) + "\n")
