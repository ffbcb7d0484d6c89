"""llmx.compat: each upstream patch still has the upstream behaviour it works around, and the
upstream names and signatures it replaces. A failure here means upstream changed: read the
patch's note in its module (what it fixes, when it can go) and drop or adapt it."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from helpers import REPO


# ---------------------------------------------------------------------------------------- hydra
def test_hydra_run_and_report_is_the_global_the_patch_replaces(monkeypatch, capsys):
    import hydra._internal.utils as hydra_utils
    from hydra.errors import ConfigCompositionException

    from llmx.compat import hydra as compat

    assert compat._hydra_run_and_report is hydra_utils.run_and_report  # importing compat.hydra patched nothing
    assert list(inspect.signature(hydra_utils.run_and_report).parameters) == ["func"]
    # _run_hydra (what @hydra.main runs) looks it up as a module global, so replacing the attribute reaches it.
    assert "run_and_report" in hydra_utils._run_hydra.__code__.co_names
    # What it replaces: Hydra's report of a composition error is not our one line and exits with 1, not 2.
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def fail():
        raise ConfigCompositionException("Could not override 'x'.\nTo append to your config use +x=1")

    with pytest.raises(SystemExit) as exit_info:
        hydra_utils.run_and_report(fail)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["Could not override 'x'.", "To append to your config use +x=1"]
    assert "Set the environment variable HYDRA_FULL_ERROR=1" in lines[-1]  # the hint our one line leaves out


def test_hydra_job_return_value_writes_a_second_line_for_a_failed_job(capsys):
    from hydra.core.utils import JobReturn, JobStatus

    from llmx.compat import hydra as compat
    from llmx.errors import ConfigError

    assert isinstance(JobReturn.return_value, property) and JobReturn.return_value is compat._hydra_return_value
    job = JobReturn(overrides=["a=1"], status=JobStatus.FAILED)
    job.return_value = ConfigError("a: bad")  # the setter the patch keeps
    assert isinstance(job._return_value, ConfigError)
    with pytest.raises(ConfigError):
        JobReturn.return_value.fget(job)
    assert capsys.readouterr().err.startswith("Error executing job with overrides: ['a=1']")
    with pytest.raises(ConfigError):
        compat._return_value(job)  # the patched getter: re-raises, writes nothing
    assert capsys.readouterr().err == ""


def test_hydra_error_formats_config_error_line_reads():
    """config_error_line drops Hydra's hint line and lists a MissingConfigException's options."""
    import hydra._internal.config_loader_impl as loader
    from hydra.errors import MissingConfigException

    from llmx.compat.hydra import config_error_line

    assert "To append to your config use +" in inspect.getsource(loader)
    assert "options" in inspect.signature(MissingConfigException).parameters
    ex = MissingConfigException("Could not find 'model/x'", missing_cfg_file="model/x", options=["qwen2", "llama"])
    assert config_error_line(ex) == "config error: Could not find 'model/x' (available: llama, qwen2)"


def test_hydra_schema_warning_is_a_user_warning_with_the_silenced_text():
    import re

    import hydra._internal.config_loader_impl as loader
    import hydra._internal.deprecation_warning as deprecation

    from llmx.compat.hydra import SCHEMA_WARNING

    source = inspect.getsource(loader)
    message = source[source.index("'{config_path}' is validated against ConfigStore schema") - 1:]
    assert re.match(SCHEMA_WARNING, "\n" + message.replace("{config_path}", "hydra/launcher/submitit_slurm"))
    # deprecation_warning is a plain warnings.warn: a UserWarning, which the filter's category matches
    assert "warnings.warn(message, stacklevel=stacklevel + 1)" in inspect.getsource(deprecation.deprecation_warning)


# ---------------------------------------------------------------------------------------- paddle
_GLOO_PROBE = """
import json, os, socket
os.environ.update(PADDLE_TRAINER_ID="0", PADDLE_TRAINERS_NUM="1")
import paddle
from paddle.base import core
from llmx.compat import paddle as compat
paddle.set_device("cpu")
with socket.socket() as sock:
    sock.bind(("", 0))
    port = sock.getsockname()[1]
pg = core.ProcessGroupGloo.create(core.TCPStore("127.0.0.1", port, True, 1), 0, 1, 0)
SUM = core.ReduceOp.SUM
x = lambda: paddle.to_tensor([1.0, 2.0])
calls = {
    "all_reduce_on_calc_stream": lambda: pg.all_reduce_on_calc_stream(x(), SUM),
    "broadcast_on_calc_stream": lambda: pg.broadcast_on_calc_stream(x(), 0),
    "reduce_on_calc_stream": lambda: pg.reduce_on_calc_stream(x(), 0, SUM),
    "send_on_calc_stream": lambda: pg.send_on_calc_stream(x(), 0),
    "recv_on_calc_stream": lambda: pg.recv_on_calc_stream(x(), 0),
    "all_gather_into_tensor_on_calc_stream": lambda: pg.all_gather_into_tensor_on_calc_stream(x(), x()),
    "reduce_scatter_tensor": lambda: pg.reduce_scatter_tensor(x(), x(), SUM, True),
    "reduce_scatter_tensor_on_calc_stream": lambda: pg.reduce_scatter_tensor_on_calc_stream(x(), x(), SUM),
    "send_partial": lambda: pg.send_partial(x(), 0, 1, 0, True),
    "recv_partial": lambda: pg.recv_partial(x(), 0, 1, 0, True),
}
def outcome(call):
    try:
        call()
        return "ok"
    except Exception as ex:
        return type(ex).__name__ + ": " + str(ex).strip().splitlines()[0]
before = {name: outcome(call) for name, call in calls.items() if not name.endswith(("send_on_calc_stream", "recv_on_calc_stream"))}
compat._patch_process_group()
out = paddle.zeros([2])
pg.reduce_scatter_tensor(out, paddle.to_tensor([1.0, 2.0]), SUM, True)
print(json.dumps({"before": before, "reduce_scatter": out.tolist(),
                  "all_reduce_on_calc_stream": outcome(calls["all_reduce_on_calc_stream"])}))
"""


def test_paddle_gloo_still_lacks_the_collectives_the_cpu_patch_supplies():
    """In a one-process gloo group every op the patch redirects raises today (send/recv to oneself
    would block once implemented, so only their `partial` forms are called); patched, they run."""
    out = subprocess.run([sys.executable, "-c", _GLOO_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name, outcome in result["before"].items():
        assert outcome.startswith("NotImplementedError: (Unimplemented) ProcessGroup"), (name, outcome)
    assert result["reduce_scatter"] == [1.0, 2.0] and result["all_reduce_on_calc_stream"] == "ok"


def test_paddle_functions_the_cpu_patch_replaces_keep_their_signatures():
    import paddle
    from paddle.base import core
    from paddle.distributed import collective, sharding
    from paddle.distributed.fleet.layers.mpu import mp_ops
    from paddle.distributed.fleet.meta_parallel import tensor_parallel
    from paddle.distributed.fleet.meta_parallel.sharding import group_sharded_optimizer_stage2, group_sharded_storage

    from llmx.compat import paddle as compat

    def params(fn):
        return list(inspect.signature(fn).parameters)

    ops = {"_c_identity": compat.c_identity, "_mp_allreduce": compat.mp_allreduce, "_c_concat": compat.c_concat,
           "_c_split": compat.c_split, "_c_lookup_table": compat.c_lookup_table,
           "_c_softmax_with_cross_entropy": compat.c_softmax_with_cross_entropy}
    for name, ours in ops.items():
        assert params(getattr(mp_ops, name)) == params(ours), name
        assert getattr(collective, name) is getattr(mp_ops, name), name  # looked up in both places
    assert params(sharding.group_sharded_parallel) == params(compat._group_sharded_parallel)
    assert params(collective._new_process_group_impl)[:7] == ["backend", "store", "rank", "world_size", "group_name",
                                                               "pg_options", "group_id"]
    assert "broadcast_input_data" in tensor_parallel.TensorParallel._pre_forward.__code__.co_names
    assert params(group_sharded_storage.ParamStorage.add_rank_params) == ["self", "trainable_params", "param2align",
                                                                          "convert_gpu"]
    assert group_sharded_optimizer_stage2.core is core  # replaced by a view that claims a CUDA build
    assert params(paddle.DataParallel.forward) == ["self", "inputs", "kwargs"]
    for name in compat._COUNTED:
        assert callable(getattr(core.ProcessGroup, name)), name


def test_paddle_parallel_env_has_no_device_id_on_cpu():
    code = "from paddle.distributed.parallel import ParallelEnv\ntry:\n    ParallelEnv().device_id\nexcept AttributeError:\n    print('missing')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["missing"], out.stderr[-2000:]


def test_paddle_pipeline_still_counts_a_shared_weight_on_every_stage(monkeypatch):
    """PipelineLayer marks a SharedLayerDesc's weight on the later stages by comparing parameter names with
    attribute names (never equal), so the gradient norm counts it on every stage; the patch marks it, and
    HybridParallelClipGrad leaves a marked parameter out of the norm (and still clips its gradient)."""
    import types

    import numpy as np
    import paddle
    from paddle.distributed.fleet.meta_optimizers.dygraph_optimizer.hybrid_parallel_optimizer import (
        HybridParallelClipGrad)
    from paddle.distributed.fleet.meta_parallel.parallel_layers.pp_layers import PipelineLayer

    from llmx.compat.paddle import count_shared_weights_once

    class Head(paddle.nn.Layer):  # as PaddleNLP's pipelines name the shared weight: `embedding_weight`
        def __init__(self):
            super().__init__()
            self.weight = self.create_parameter([2, 2])

        @property
        def embedding_weight(self):
            return self.weight

    def stage(rank):
        comm = {"ranks": [0, 1], "group": None, "weight_attr": ["embedding_weight"], "layer": Head()}
        return types.SimpleNamespace(global_rank=rank, shared_comm={"shared": comm})

    monkeypatch.setattr(paddle.distributed, "broadcast", lambda *args, **kwargs: None)
    first, last = stage(0), stage(1)
    for part in (first, last):
        PipelineLayer._synchronize_shared_weights(part)
    shared = last.shared_comm["shared"]["layer"].weight
    assert getattr(shared, "is_firstly_shared", True) is not False  # upstream: the last stage counts it too
    for part in (first, last):
        count_shared_weights_once(part)
    assert getattr(first.shared_comm["shared"]["layer"].weight, "is_firstly_shared", True) is not False
    assert shared.is_firstly_shared is False

    # the clip of a stage holding the shared weight (gradient norm 4) and its own (norm 3), to a norm of 3
    alone = {"get_sharding_parallel_world_size": 1, "get_data_parallel_world_size": 1,
             "get_model_parallel_world_size": 1, "get_pipe_parallel_world_size": 1}
    hcg = types.SimpleNamespace(**{name: (lambda n=n: n) for name, n in alone.items()})
    clip = HybridParallelClipGrad(paddle.nn.ClipGradByGlobalNorm(3.0), hcg)
    own = paddle.create_parameter([1], "float32")
    grads = [(own, paddle.to_tensor([3.0])), (shared, paddle.to_tensor([[4.0, 0.0], [0.0, 0.0]]))]
    (_, own_grad), (_, shared_grad) = clip(grads)
    np.testing.assert_allclose(own_grad.numpy(), [3.0], rtol=1e-5)  # the norm left the shared weight out
    np.testing.assert_allclose(shared_grad.numpy()[0, 0], 4.0, rtol=1e-5)


# ----------------------------------------------------------------------------------- paddlenlp
def _merged_matches_forward(layer, merge) -> bool:
    import numpy as np
    import paddle

    x = paddle.randn([3, layer.weight.shape[0]])
    with paddle.no_grad():
        expected = layer(x).numpy()
        merge(layer)
        layer.merged = False  # the forward of the merged weight, through the plain Linear path
        got = paddle.nn.functional.linear(x, layer.weight, layer.bias).numpy()
    return bool(np.allclose(expected, got, atol=1e-5))


_IMPORTS_PROBE = """
import sys
if sys.argv[1] == 'defer':
    from llmx.compat.paddlenlp_import import defer_unused_imports
    defer_unused_imports()
import paddlenlp.transformers, paddlenlp.trainer, paddlenlp.peft, paddlenlp.trl
print(sorted(m for m in ('paddlenlp.taskflow.taskflow', 'sklearn', 'scipy.stats', 'fastapi', 'seqeval.metrics.v1')
             if m in sys.modules))
if sys.argv[1] == 'defer':
    # every deferred name still works once used: a submodule, an attribute, a call
    import paddlenlp.taskflow.utils
    from paddlenlp.metrics.chunk import get_entities
    from paddlenlp.metrics import MRR
    from paddlenlp import Taskflow
    print(get_entities(['B-PER', 'I-PER', 'O']), type(MRR()).__name__, callable(Taskflow),
          type(sys.modules['paddlenlp.taskflow']).__name__, 'sklearn' in sys.modules)
"""


def test_paddlenlp_still_imports_its_applications_and_the_deferral_keeps_them_usable():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, mode], capture_output=True, text=True, cwd=REPO,
                             check=True).stdout
        return out.strip().splitlines()

    # upstream: a plain import still brings in taskflow, FastAPI, seqeval, scikit-learn and SciPy's statistics
    assert probe("plain")[0] == str(['fastapi', 'paddlenlp.taskflow.taskflow', 'scipy.stats', 'seqeval.metrics.v1',
                                     'sklearn'])
    deferred = probe("defer")
    assert deferred[0] == "[]"
    assert deferred[1] == "[('PER', 0, 1)] MRR True module True"


def test_paddlenlp_lokr_merge_still_calls_a_missing_get_weight():
    import paddle
    from paddlenlp.peft.lokr.lokr_layers import LoKrLinear

    from llmx.compat.paddlenlp import merge_adapter_layer

    paddle.seed(0)
    layer = LoKrLinear(8, 8, lokr_dim=2, lokr_alpha=2.0, factor=2)
    assert not hasattr(layer, "get_weight")
    with pytest.raises(AttributeError, match="get_weight"):
        layer.merge()
    for name, p in layer.named_parameters():
        if name.startswith("lokr"):
            p.set_value(paddle.randn(p.shape))
    assert _merged_matches_forward(layer, merge_adapter_layer)


def test_paddlenlp_mora_merge_still_disagrees_with_its_forward():
    import paddle
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    from llmx.compat.paddlenlp import merge_adapter_layer

    def mora_layer():
        paddle.seed(0)
        layer = LoRALinear(8, 8, r=4, use_mora=True)
        layer.lora_A.set_value(paddle.randn(layer.lora_A.shape))
        return layer

    assert not _merged_matches_forward(mora_layer(), lambda layer: layer.merge())
    assert _merged_matches_forward(mora_layer(), merge_adapter_layer)


def test_paddlenlp_llama_pipeline_still_reads_an_int64_mask_as_position_ids():
    from paddlenlp.trainer import trainer
    from paddlenlp.transformers.llama import modeling_pp

    forward = inspect.getsource(modeling_pp.LlamaEmbeddingPipe.forward)
    assert "attention_mask.dtype == paddle.int64" in forward
    assert "attention_mask, attn_mask_startend_row_indices, position_ids = None, None, attention_mask" in forward
    assert "model._prepare_pipeline_inputs_func(" in inspect.getsource(trainer)  # the hook the patch wraps
