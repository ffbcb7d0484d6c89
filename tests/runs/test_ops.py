"""llmx.ops: every kernel of csrc/ against Paddle's composed ops (forward and gradients,
float32 to 1e-5) on odd shapes; the packed attention against the dense block-diagonal causal
mask; the fused cross-entropy's peak memory; the build cache and the fallback without a compiler.

The kernels are built once per session into the session's cache (tests/conftest.py's ops_cache,
inherited by the subprocesses, which then only load them)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TOL = 1e-5


@pytest.fixture(scope="session")
def ops(ops_cache):
    if shutil.which(os.environ.get("CXX") or "c++") is None:  # (a failure under LLMX_STRICT_SKIPS=1)
        pytest.skip("no C++ compiler to build csrc/ (install g++)")
    import paddle

    import llmx.ops

    paddle.set_device("cpu")
    assert llmx.ops.configure("on")
    return llmx.ops


def _inputs(*shapes, seed=0):
    import paddle

    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        t = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
        t.stop_gradient = False
        out.append(t)
    return out


def _grads(fn, inputs, seed=1):
    """Outputs of fn(*inputs) and the gradients of sum(out * random) w.r.t. the inputs."""
    import paddle

    for t in inputs:
        t.clear_gradient()
    outs = fn(*inputs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    rng = np.random.default_rng(seed)
    total = sum((o * paddle.to_tensor(rng.standard_normal(o.shape).astype("float32"))).sum() for o in outs)
    grads = paddle.grad(total, inputs)
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


def _assert_same(fused, composed, inputs):
    (fo, fg), (co, cg) = _grads(fused, inputs), _grads(composed, inputs)
    for a, b in zip(fo + fg, co + cg):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


# hidden sizes off the vector width (1, 13, 37), one row, a long row
NORM_SHAPES = [(1, 13), (5, 37), (2, 3, 1), (3, 4099)]


@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_rms_norm_matches_composed(ops, shape):
    x, w = _inputs(shape, shape[-1:])
    _assert_same(lambda x, w: ops.rms_norm(x, w, 1e-6), lambda x, w: ops.composed.rms_norm(x, w, 1e-6), [x, w])
    x, r, w = _inputs(shape, shape, shape[-1:], seed=2)
    _assert_same(lambda x, r, w: ops.add_rms_norm(x, r, w, 1e-5),
                 lambda x, r, w: ops.composed.add_rms_norm(x, r, w, 1e-5), [x, r, w])


U32 = 2.0 ** -24  # float32's unit roundoff


def _gamma(k):
    """The bound on the relative rounding error of a k-term float32 sum or dot product, in any order."""
    return k * U32 / (1 - k * U32)


@pytest.mark.parametrize("shape", [(3, 17, 576), (2, 4099)])
def test_add_rms_norm_within_float32_rounding(ops, shape):
    """The fused residual add + RMSNorm and Paddle's composed ops, forward and all three gradients, each
    against the float64 result within float32's worst-case rounding: the row's sum of squares carries at
    most gamma(h) relative error (h = hidden size; the sqrt halves it), a handful of single roundings
    come on top (the add, the mean, eps, sqrt, 1/x, two products: 8u allowed); the input gradient's
    correction term carries rstd^3 (3 x rstd's error) and a second h-term dot; the weight gradient a
    sum over the rows. Elementwise, scaled by the magnitudes of each formula's terms (cancellation
    between them is not rounding error). A 576 hidden size is SmolLM2-135M's."""
    import paddle

    rng = np.random.default_rng(7)
    x, r, dy, dh = (rng.standard_normal(shape).astype("float32") for _ in range(4))
    w = rng.standard_normal(shape[-1:]).astype("float32")
    eps, n, rows = 1e-5, shape[-1], int(np.prod(shape[:-1]))

    def run(fn, dtype):
        xs = [paddle.to_tensor(a.astype(dtype)) for a in (x, r, w)]
        for t in xs:
            t.stop_gradient = False
        y, h = fn(*xs, eps)
        grads = paddle.grad([y, h], xs, grad_outputs=[paddle.to_tensor(dy.astype(dtype)), paddle.to_tensor(dh.astype(dtype))])
        return [t.numpy().astype("float64") for t in (y, h, *grads)]

    ref = run(ops.composed.add_rms_norm, "float64")
    hs = x.astype("float64") + r
    rstd = 1 / np.sqrt((hs ** 2).mean(-1, keepdims=True) + eps)
    direct = np.abs(rstd * w * dy)  # the terms of d x = rstd w dy - h rstd^3 / n sum(w dy h) + dh
    correction = np.abs(hs) * rstd ** 3 / n * np.abs(w * dy * hs).sum(-1, keepdims=True)
    norm_err, dot_err = _gamma(n) / 2 + 8 * U32, 3 * (_gamma(n) / 2 + 8 * U32) + _gamma(n)
    dx_bound = norm_err * direct + dot_err * correction + U32 * np.abs(ref[2])
    dw_bound = (_gamma(rows) + norm_err) * np.abs(dy * hs * rstd).reshape(rows, n).sum(0)
    bounds = [norm_err * np.abs(ref[0]), U32 * np.abs(ref[1]), dx_bound, dx_bound, dw_bound]
    names = ["y", "h", "d x", "d residual", "d weight"]
    for label, fn in (("fused", ops.add_rms_norm), ("composed", ops.composed.add_rms_norm)):
        for name, got, want, bound in zip(names, run(fn, "float32"), ref, bounds):
            worst = float((np.abs(got - want) / np.maximum(bound, 1e-300)).max())
            assert worst <= 1.0, f"{label} {name}: {worst:.2f} x the float32 rounding bound"


@pytest.mark.parametrize("b,s,heads,kv_heads,d,cos_b", [(1, 1, 1, 1, 2, 1), (2, 7, 3, 1, 10, 2), (3, 33, 4, 2, 66, 1)])
def test_rope_matches_composed(ops, b, s, heads, kv_heads, d, cos_b):
    import paddle

    q, k = _inputs((b, s, heads, d), (b, s, kv_heads, d))
    rng = np.random.default_rng(3)
    angle = rng.uniform(0, 6.3, (cos_b, s, d)).astype("float32")
    cos, sin = paddle.to_tensor(np.cos(angle)), paddle.to_tensor(np.sin(angle))
    _assert_same(lambda q, k: ops.rope(q, k, cos, sin), lambda q, k: ops.composed.rope(q, k, cos, sin), [q, k])


def test_rope_rotates_q_and_k_in_place(ops):
    """As in a model (q, k computed, not leaves): the kernel writes the rotation over them; when
    only q is used further, k's input gets a zero gradient."""
    import paddle

    q0, k0 = _inputs((2, 5, 3, 8), (2, 5, 1, 8))
    angle = paddle.to_tensor(np.random.default_rng(3).uniform(0, 6.3, (1, 5, 8)).astype("float32"))
    q, k = q0 * 2, k0 * 2
    before = q.numpy()
    qr, kr = ops.rope(q, k, angle.cos(), angle.sin())
    assert qr.data_ptr() == q.data_ptr() and kr.data_ptr() == k.data_ptr()
    assert not np.allclose(q.numpy(), before)  # q itself now holds the rotation
    ref_q, _ = ops.composed.rope(q0 * 2, k0 * 2, angle.cos(), angle.sin())
    np.testing.assert_allclose(qr.numpy(), ref_q.numpy(), rtol=TOL, atol=TOL)
    dq, dk = paddle.grad(qr.sum(), [q0, k0])
    np.testing.assert_allclose(dq.numpy(), paddle.grad(ref_q.sum(), [q0])[0].numpy(), rtol=TOL, atol=TOL)
    assert float(dk.abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (2, 5, 1031)])
def test_swiglu_matches_composed(ops, shape):
    g, u = _inputs(shape, shape)
    _assert_same(ops.swiglu, ops.composed.swiglu, [g, u])
    both, = _inputs(shape[:-1] + (2 * shape[-1],))
    _assert_same(lambda x: ops.swiglu(x), lambda x: ops.composed.swiglu(*x.chunk(2, axis=-1)), [both])


@pytest.mark.parametrize("n,h,v,tied,chunk", [(1, 3, 5, False, None), (37, 13, 101, False, 8), (50, 16, 257, True, 7)])
def test_fused_linear_cross_entropy_matches_composed(ops, n, h, v, tied, chunk):
    import paddle

    hidden, weight = _inputs((n, h), (v, h) if tied else (h, v))
    labels = np.random.default_rng(4).integers(0, v, n)
    labels[::3] = -100  # ignored positions (all of them when n == 1)
    if n > 1:
        labels[1] = 0
    labels = paddle.to_tensor(labels)
    for reduction in ("mean", "sum"):
        _assert_same(lambda x, w: ops.fused_linear_cross_entropy(x, w, labels, -100, tied, reduction, chunk=chunk),
                     lambda x, w: ops.composed.fused_linear_cross_entropy(x, w, labels, -100, tied, reduction),
                     [hidden, weight])


def _segments(b, s, examples, seed):
    """[b, s] segment ids: `examples` uneven examples per row, the rest of the row padding (own segment)."""
    rng = np.random.default_rng(seed)
    seg = np.empty((b, s), dtype="int64")
    for r in range(b):
        cuts = np.sort(rng.choice(np.arange(1, s - 2), examples - 1, replace=False)) if examples > 1 else []
        bounds = [0, *cuts, s - 2]  # two padding positions form the last segment
        for i in range(len(bounds) - 1):
            seg[r, bounds[i]:bounds[i + 1]] = i
        seg[r, s - 2:] = len(bounds) - 1
    return seg


@pytest.mark.parametrize("examples,heads,kv_heads", [(1, 2, 2), (3, 4, 2), (17, 3, 1)])
def test_packed_attention_matches_block_diagonal_mask(ops, examples, heads, kv_heads):
    import paddle

    b, s, d = 2, 61, 10
    seg = paddle.to_tensor(_segments(b, s, examples, seed=examples))
    q, k, v = _inputs((b, s, heads, d), (b, s, kv_heads, d), (b, s, kv_heads, d), seed=examples)
    mask = paddle.to_tensor(
        (np.equal.outer(seg.numpy(), seg.numpy()).diagonal(axis1=0, axis2=2).transpose(2, 0, 1) & np.tri(s, dtype=bool)))
    assert mask.numpy().sum(-1).min() >= 1 and ops.composed.block_causal_mask(seg).numpy()[:, 0].tolist() == mask.numpy().tolist()

    def dense(q, k, v):  # attention with the dense block-diagonal causal mask, written out
        rep = heads // kv_heads
        k, v = paddle.repeat_interleave(k, rep, axis=2), paddle.repeat_interleave(v, rep, axis=2)
        scores = paddle.einsum("bihd,bjhd->bhij", q, k) * d ** -0.5 + paddle.where(
            mask.unsqueeze(1), paddle.zeros([1]), paddle.full([1], -1e30))
        return paddle.einsum("bhij,bjhd->bihd", paddle.nn.functional.softmax(scores, -1), v)

    _assert_same(lambda q, k, v: ops.packed_attention(q, k, v, seg), dense, [q, k, v])
    assert "packed_attention" in ops.used()


PEAK_SCRIPT = """
import sys, paddle, llmx.ops as ops
fused = sys.argv[1] == "fused"
ops.configure("on" if fused else "off")
paddle.seed(0)
h = paddle.randn([1024, 1024]) * 0.05
w = paddle.randn([1024, 32000]) * 0.05
h.stop_gradient = w.stop_gradient = False
y = paddle.randint(0, 32000, [1024])
kb = lambda key: [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)][0]
open("/proc/self/clear_refs", "w").write("5")  # peak (VmHWM) := current resident memory
base = kb("VmRSS")
loss = (ops.fused_linear_cross_entropy if fused else ops.composed.fused_linear_cross_entropy)(h, w, y)
loss.backward()
print(base, kb("VmHWM"), float(loss), float(h.grad.abs().sum()), float(w.grad.abs().sum()), ops.used())
"""


def test_fused_cross_entropy_peak_memory_below_composed(ops):
    """Vocabulary 32k, 1k tokens, hidden 1024: each variant in its own process, its peak resident
    memory (VmHWM) above what the inputs hold; same loss and gradients. Both must hold the weight's
    gradient (125 MiB); beyond it the fused one needs under half the composed one's memory."""
    res = {}
    for variant in ("fused", "composed"):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, variant], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        base, hwm, loss, gh, gw, used = out.stdout.strip().splitlines()[-1].split(" ", 5)
        res[variant] = ((int(hwm) - int(base)) / 1024, float(loss), float(gh), float(gw), used)
    fused, comp = res["fused"], res["composed"]
    grad_w = 1024 * 32000 * 4 / 2 ** 20
    print(f"peak above inputs: fused {fused[0]:.0f} MiB, composed {comp[0]:.0f} MiB (weight gradient {grad_w:.0f} MiB)")
    assert "fused_linear_cross_entropy" in fused[4] and comp[4] == "[]"
    np.testing.assert_allclose(fused[1:4], comp[1:4], rtol=1e-4)
    assert fused[0] < comp[0], res
    assert fused[0] - grad_w < (comp[0] - grad_w) / 2, res


# --- models: model.fused_ops ----------------------------------------------------------------------------

# What llmx.ops.patch switches per family (tiny configs): the layers that behave like the kernels;
# the fused cross-entropy where the loss is criterion(lm_head(hidden), labels) with a plain lm_head.
CE = "fused_linear_cross_entropy"
# add_rms_norm: a pre-norm decoder layer (Llama's) whose post-attention norm is switched.
ADD = "add_rms_norm"
SWITCHED = {"llama": [ADD, CE, "rms_norm", "rope", "swiglu"], "baichuan": [ADD, CE, "rms_norm", "rope", "swiglu"],
            "qwen2": [ADD, CE, "rms_norm", "rope", "swiglu"], "qwen": [CE, "rms_norm", "rope"], "mixtral": [CE, "rms_norm", "rope"],
            "mistral": [ADD, CE, "rms_norm", "swiglu"], "gemma": [CE, "rope"], "chatglm2": ["rms_norm"], "yuan": [ADD, "rms_norm"],
            "bloom": [CE], "gpt3": [CE], "opt": []}  # LayerNorm/GELU families: no other layer matches
ATTENTION = ("llama", "baichuan", "qwen2")  # PaddleNLP's scaled_dot_product_attention: packed_attention switched in
# lm_head tied to the embedding ([vocab, hidden], transposed) in these runs; the 20-step tiny run has its own lm_head
TIED = {"llama": ["model.overrides.tie_word_embeddings=true"], "qwen2": ["model.overrides.tie_word_embeddings=true"]}
STEPS = ["stage.train.logging_steps=1", "stage.train.save_steps=1000", "stage.eval.enabled=false", "stage.train.lr=3e-3"]


def test_fused_on_and_off_train_the_same(ops, tmp_path):
    """One process: the tiny model 20 steps with fused_ops=on and off (same losses and eval losses to
    1e-5), and every trainable
    family 2 steps both ways (same losses; summary.json names the ops that ran)."""
    from helpers import read_json, run_matrix, train_losses

    evals = ["stage.eval.enabled=true", "stage.eval.num_samples=1", "stage.eval.max_new_tokens=1"]
    runs = {f"tiny-{mode}": ["model=tiny", f"model.fused_ops={mode}", "stage.zero_padding=true",
                             "stage.train.max_steps=20", *STEPS, *evals] for mode in ("on", "off")}
    for fam in SWITCHED:
        runs.update({f"{fam}-{mode}": [f"model={fam}", "model.size=tiny", f"model.fused_ops={mode}", *TIED.get(fam, []),
                                       "stage.train.max_steps=2", *STEPS] for mode in ("on", "off")})
    out = run_matrix(runs, tmp_path)
    for name, n, ran in [("tiny", 20, sorted(["packed_attention", *SWITCHED["llama"]]))] + [(f, 2, SWITCHED[f]) for f in SWITCHED]:
        on, off = train_losses(out / f"{name}-on"), train_losses(out / f"{name}-off")
        assert len(on) == n and [s for s, _ in on] == [s for s, _ in off]
        np.testing.assert_allclose([l for _, l in on], [l for _, l in off], rtol=TOL, atol=TOL, err_msg=name)
        summary_on, summary_off = read_json(out / f"{name}-on" / "summary.json"), read_json(out / f"{name}-off" / "summary.json")
        fused = summary_on["fused_ops"]
        if name != "tiny":  # padded batches: the attention kernel runs only on a batch without padding
            fused = [op for op in fused if op != "packed_attention" or name not in ATTENTION]
        assert fused == ran, name
        assert "fused_ops" not in summary_off, name
    tiny_on, tiny_off = read_json(out / "tiny-on" / "summary.json"), read_json(out / "tiny-off" / "summary.json")
    assert tiny_on["eval_loss"] > 0
    np.testing.assert_allclose(tiny_on["eval_loss"], tiny_off["eval_loss"], rtol=TOL, atol=TOL)


def test_fused_loss_in_training_only_and_static_export_holds_paddle_ops_only(ops, tmp_path):
    """Training forwards return the fused loss without logits; eval forwards keep the logits (metrics
    read them) with the same loss; a static export of a fused model holds none of llmx's kernels."""
    import paddle
    from helpers import launch, read_json
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    from llmx.ops.patch import composed_only, enable

    paddle.seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=97, max_position_embeddings=16)
    model = LlamaForCausalLM.from_config(config, dtype="float32")
    assert "fused_linear_cross_entropy" in enable(model, "on")
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, 97, (2, 9)))
    model.eval()
    loss_eval, logits = model(input_ids=ids, labels=ids, return_dict=False)[:2]
    model.train()  # (no dropout in this config)
    loss_train, no_logits = model(input_ids=ids, labels=ids, return_dict=False)[:2]
    assert logits.shape == [2, 9, 97] and no_logits is None
    np.testing.assert_allclose(float(loss_train), float(loss_eval), rtol=TOL)
    with composed_only(model):
        assert "forward" not in vars(model) and ops.kernels() is None
    assert "forward" in vars(model) and ops.kernels() is not None  # switched back

    launch("stage=infer", "model.fused_ops=on", "stage.mode=static", "stage.export_only=true", f"hydra.run.dir={tmp_path}")
    program = (tmp_path / "static" / "inference.json").read_text()
    assert "llama" in read_json(tmp_path / "static" / "config.json")["model_type"] and "llmx_" not in program


def test_fused_residual_norm_in_decoder_layers_trains_as_the_unfused_layers(ops):
    """A tiny Llama with the attention's residual add fused into the post-attention norm against the same
    model whose decoder layers run their own forward (every other kernel on in both): the kernel adds the
    same two float32 numbers and normalises with the rms_norm kernel's code, so loss and gradients agree
    to float32 rounding (bitwise here). Padded (not packed) rows: the layer's mask path as in eval."""
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    from llmx.ops.patch import enable

    ids = np.random.default_rng(0).integers(1, 97, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0

    def loss_and_grads(fuse_residual):
        paddle.seed(0)
        config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=97, max_position_embeddings=16)
        model = LlamaForCausalLM.from_config(config, dtype="float32")
        switched = enable(model, "on", skip=() if fuse_residual else ("add_rms_norm",))
        assert ("add_rms_norm" in switched) == fuse_residual and "rms_norm" in switched
        model.train()
        loss = model(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), labels=paddle.to_tensor(ids),
                     return_dict=False)[0]
        loss.backward()
        assert ("add_rms_norm" in ops.used()) == fuse_residual
        return float(loss), {name: p.grad.numpy() for name, p in model.named_parameters()}

    (fused_loss, fused), (loss, unfused) = loss_and_grads(True), loss_and_grads(False)
    np.testing.assert_allclose(fused_loss, loss, rtol=4 * U32)
    for name, g in unfused.items():
        np.testing.assert_allclose(fused[name], g, rtol=0, atol=4 * U32 * float(np.abs(g).max()), err_msg=name)


def test_grouped_heads_reach_the_kernel_untiled_and_train_as_paddles_ops(ops, monkeypatch):
    """GQA, 4 query heads per 2 key/value heads: a switched attention layer hands the key/value heads to the
    packed-attention kernel grouped (repeat_kv leaves them), and to PaddleNLP's attention function repeated (padded
    rows). Loss and gradients equal the same model's with every kernel off, within float32 rounding; the mask's
    segments are read once per forward, not once per layer."""
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    import llmx.ops.patch as patch

    seen, reads = [], []
    packed_attention, read_segments = ops.packed_attention, patch._read_segments
    monkeypatch.setattr(ops, "packed_attention", lambda q, k, v, seg: seen.append(k.shape[2]) or packed_attention(q, k, v, seg))
    monkeypatch.setattr(patch, "_read_segments", lambda mask: reads.append(1) or read_segments(mask))
    ids = np.random.default_rng(0).integers(1, 97, (2, 9))
    seg = np.array([[0] * 4 + [1] * 5, [0] * 9])
    packed = (seg[:, :, None] == seg[:, None, :]) & np.tril(np.ones((9, 9), dtype=bool))
    padded = np.ones_like(ids)
    padded[1, 6:] = 0

    def loss_and_grads(mode, mask):
        paddle.seed(0)
        config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=97, max_position_embeddings=16)
        model = LlamaForCausalLM.from_config(config, dtype="float32")
        assert ("packed_attention" in patch.enable(model, mode)) == (mode == "on")
        seen.clear(), reads.clear()  # (the switches' probes ran the kernel)
        model.train()
        loss = model(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), labels=paddle.to_tensor(ids),
                     return_dict=False)[0]
        loss.backward()
        return float(loss), {name: p.grad.numpy() for name, p in model.named_parameters()}

    for mask, kernel_calls in [(packed[:, None], [2, 2]), (padded, [])]:
        (fused_loss, fused) = loss_and_grads("on", mask)
        assert seen == kernel_calls and len(reads) == 1  # two layers, grouped heads, one reading of the mask
        (loss, composed) = loss_and_grads("off", mask)
        np.testing.assert_allclose(fused_loss, loss, rtol=TOL)
        for name, g in composed.items():
            np.testing.assert_allclose(fused[name], g, rtol=0, atol=TOL * float(np.abs(g).max()), err_msg=name)
    assert ops.configure("on")


def test_every_kernel_switches_into_the_real_checkpoint(ops, real_model_dir):
    """SmolLM2-135M's real weights: the probes' outputs reach ~1e3, and a check at a fixed 1e-5 kept its
    SwiGLU MLPs composed; every kernel must switch in (the tiny models' weights never showed it)."""
    from paddlenlp.transformers import LlamaForCausalLM

    from llmx.ops.patch import enable

    model = LlamaForCausalLM.from_pretrained(real_model_dir, dtype="float32")
    assert enable(model, "on") == sorted(ops.OPS)


CUDA_FAILS = """
import llmx.ops.build as b
b.cuda_toolchain = lambda: True  # as on a GPU machine: its CUDA sources are tried (and fail here: no CUDA headers)
import paddle, llmx.ops as ops
assert ops.configure("on")
ops.rms_norm(paddle.randn([3, 8]), paddle.ones([8]))
print(b.gpu_build(), ops.used(), b.cuda_status())
"""


def test_a_failed_cuda_build_keeps_the_cpu_kernels(ops):
    out = subprocess.run([sys.executable, "-c", CUDA_FAILS], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False ['rms_norm'] no: compiling csrc/ failed: "), out


def test_without_a_compiler_auto_falls_back_once_and_on_fails_in_one_line(ops, tmp_path):
    from helpers import launch, read_json, train_losses

    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "LLMX_OPS_CACHE": str(tmp_path / "empty_cache")}
    common = ["stage.train.max_steps=2", *STEPS]
    auto = launch(f"hydra.run.dir={tmp_path / 'auto'}", "model.fused_ops=auto", *common, env=env)
    said = [ln for ln in (auto.stdout + auto.stderr).splitlines() if "fused ops" in ln]
    assert said == [f"llmx: warning: fused ops: kernels unavailable, using Paddle's composed ops: no C++ compiler: "
                    f"'{tmp_path / 'no-such-g++'}' is not on PATH (set CXX or install g++)"], said
    assert len(train_losses(tmp_path / "auto")) == 2 and read_json(tmp_path / "auto" / "summary.json")["fused_ops"] == []
    on = launch(f"hydra.run.dir={tmp_path / 'on'}", "model.fused_ops=on", *common, env=env, check=False)
    assert on.returncode == 2 and on.stderr.strip().splitlines() == [
        f"llmx: fused ops: no C++ compiler: '{tmp_path / 'no-such-g++'}' is not on PATH (set CXX or install g++)"], on.stderr


def test_check_command_and_cache_reuse(ops):
    """`python -m llmx.ops check` in a second process loads the session's build (no rebuild) and
    self-tests every op."""
    out = subprocess.run([sys.executable, "-m", "llmx.ops", "check"], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert os.environ["LLMX_OPS_CACHE"] in lines[0]
    for name in ops.OPS:
        assert any(ln.split()[:4] == [name, "built", "self-test", "ok"] for ln in lines), out.stdout
    # this session's one build, found by the second process (a cache kept across sessions may hold older keys)
    assert out.stderr == "" and (Path(os.environ["LLMX_OPS_CACHE"]) / ops.build.cache_key() / "llmx_ops" / "llmx_ops.so").is_file()
