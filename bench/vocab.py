"""llmx.ops.vocab against the floor `x - logsumexp(x)` and against the `log_softmax` path it replaced,
side by side in one process: each path's seconds at vocabularies 32k and 152k (--vocabs), --rows
rows of logits (default 512: 311 MB of float32 per tensor at 152k), median of --reps, op and floor
alternating.

Paths: token log-probabilities forward (what rollouts and the reference model compute), forward +
backward (the PPO/GRPO policy loss: a gradient of the chosen tokens' log-probs handed back), entropy
(the RL metric), KL of two logit tensors (token_kl: eval KL of policy and reference) and perplexity as
quantize computes it ([batch, seq, vocab] logits, no gradient, NLL to numpy). Each path's floor is the
same work written with `x - logsumexp(x)` unchunked: the gather of the labels (and, with backward,
autograd through both), `exp(lp) * lp` summed for entropy, both inputs normalised for KL. Target:
each path at most 1.5x its floor.

The old path (Paddle's `log_softmax`, quadratic in the vocabulary on CPU) is timed on --old-rows rows
and scaled to --rows (its cost is linear in rows); at 152k it would take minutes even so, and is
skipped. Paddle's elementwise and reduction CPU kernels run on one thread whatever --threads says
(default 1: a training run's setting; paddle's import sets OMP_NUM_THREADS=1 when it is unset).

    python bench/vocab.py                       # ~3 min on 2 shared cores
    python bench/vocab.py --vocabs 49152 --rows 256 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocabs", default="32000,151936", help="comma-separated vocabulary sizes")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--old-rows", type=int, default=16, help="rows the old log_softmax path is timed on")
    p.add_argument("--old-max-vocab", type=int, default=65536, help="above this the old path is skipped")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict, reps: int) -> dict:
    """Median seconds of each function, run in turn `reps` times after one warm-up round."""
    for fn in fns.values():
        fn()
    runs = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            runs[name].append(timed(fn))
    return {name: statistics.median(r) for name, r in runs.items()}


def paths(x, y, labels, grad, ids_shape):
    """{path: {"op", "floor", "old"}: zero-argument callables} over logits x, y [rows, vocab]."""
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from llmx.ops import vocab

    def floor_lp(t):
        return t - paddle.logsumexp(t, axis=-1, keepdim=True)

    def pick(lp, lab):
        return paddle.take_along_axis(lp, lab.unsqueeze(-1), axis=-1).squeeze(-1)

    def backward(logprobs_of):
        def run():
            leaf = x.detach()
            leaf.stop_gradient = False
            (logprobs_of(leaf) * grad).sum().backward()
        return run

    def kl_of(normalise):
        def run():
            lp, lq = normalise(x), normalise(y)
            return (lp.exp() * (lp - lq)).sum(-1)
        return run

    def entropy_of(normalise):
        def run():
            lp = normalise(x)
            return -(lp.exp() * lp).sum(-1)
        return run

    x3, lab3 = x.reshape(ids_shape + [x.shape[-1]]), labels.reshape(ids_shape)
    lab3_np = lab3.numpy()

    def ppl_op():  # llmx.quant.ptq.perplexity's per-batch work
        with paddle.no_grad():
            return float((-vocab.token_logprobs(x3, lab3).numpy()).sum())

    def ppl_with(normalise):
        def run():
            with paddle.no_grad():
                lp = normalise(x3).numpy()
            return float(-np.take_along_axis(lp, lab3_np[..., None], axis=-1).sum())
        return run

    old = lambda t: F.log_softmax(t, axis=-1)  # noqa: E731
    return {
        "token log-probs fwd": {"op": lambda: vocab.token_logprobs(x, labels),
                                "floor": lambda: pick(floor_lp(x), labels), "old": lambda: pick(old(x), labels)},
        "token log-probs fwd+bwd": {"op": backward(lambda t: vocab.token_logprobs(t, labels)),
                                    "floor": backward(lambda t: pick(floor_lp(t), labels)),
                                    "old": backward(lambda t: pick(old(t), labels))},
        "entropy": {"op": lambda: vocab.entropy(x), "floor": entropy_of(floor_lp), "old": entropy_of(old)},
        "KL (token_kl)": {"op": lambda: vocab.kl(x, y), "floor": kl_of(floor_lp), "old": kl_of(old)},
        "perplexity (quantize)": {"op": ppl_op, "floor": ppl_with(floor_lp), "old": ppl_with(old)},
    }


def main():
    args = parse()
    import paddle
    from paddle.base import core

    core.set_num_threads(args.threads)  # Paddle's MKL; the ops timed here are not GEMMs
    paddle.set_device("cpu")
    paddle.seed(0)
    print(f"rows {args.rows}, reps {args.reps}, threads {args.threads}; seconds (median)")
    worst = 0.0
    for v in (int(s) for s in args.vocabs.split(",")):
        x, y = paddle.randn([args.rows, v]) * 4, paddle.randn([args.rows, v]) * 4
        labels, grad = paddle.randint(0, v, [args.rows]), paddle.randn([args.rows])
        batch = 4 if args.rows % 4 == 0 else 1
        timed_paths = paths(x, y, labels, grad, [batch, args.rows // batch])
        small = None
        if v <= args.old_max_vocab:
            n = min(args.old_rows, args.rows)
            small = paths(x[:n], y[:n], labels[:n], grad[:n], [1, n])
        print(f"\nvocab {v} ({args.rows * v * 4 / 1e6:.0f} MB of float32 logits per tensor)")
        print(f"  {'path':26s} {'op s':>8s} {'floor s':>8s} {'op/floor':>8s} {'old s':>10s} {'old/op':>8s}")
        for name, fns in timed_paths.items():
            t = alternate({"op": fns["op"], "floor": fns["floor"]}, args.reps)
            ratio = t["op"] / t["floor"]
            worst = max(worst, ratio)
            if small is not None:  # one rep: it is the slow side by orders of magnitude
                old = timed(small[name]["old"]) * args.rows / min(args.old_rows, args.rows)
                old_s, old_ratio = f"{old:10.2f}", f"{old / t['op']:7.0f}x"
            else:
                old_s, old_ratio = f"{'skipped':>10s}", f"{'':>8s}"
            print(f"  {name:26s} {t['op']:8.3f} {t['floor']:8.3f} {ratio:7.2f}x {old_s} {old_ratio}", flush=True)
        if small is None:
            print(f"  (old log_softmax skipped above {args.old_max_vocab}: quadratic in the vocabulary, "
                  f"~{(v / 49152) ** 2 * 16 / 64:.1f} s per row)")
        else:
            print(f"  (old: timed on {min(args.old_rows, args.rows)} rows, scaled to {args.rows})")
    print(f"\nvocab: worst op/floor {worst:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
