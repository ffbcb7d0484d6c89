"""Zero padding (packing) vs padding: non-pad token fraction and effective tokens/s, side by side.

An SFT set with long-tailed (lognormal) lengths is synthesized directly as encoded
examples (input_ids + shifted labels, a prompt part unlearned), deterministically from
--seed. The same examples train the same model (Llama, random init, same seed) two ways
in one process, with every step = collate + forward + backward + optimizer step:
- padded: shuffled batches of --batch-size examples, padded to the batch's longest
  (PadCollator, what `stage.zero_padding=false` trains on);
- packed: the examples packed first-fit decreasing into sequences of <= --max-length
  tokens (llmx.data.packing), shuffled batches of rows padded to the batch's longest row,
  a dense block-diagonal bool mask [b, 1, s, s] (PackedCollator, the CPU path of
  `stage.zero_padding=true`). --rows sets rows per batch (default: as many real tokens
  per step as the padded batches carry on average).
The two ways alternate in chunks of --chunk steps so that outside load hits both alike;
the first --warmup steps of each are not timed. Effective tokens/s = real (non-pad)
tokens / seconds; `collate` is the ms/step spent building the batch (and mask) on CPU.
An optional third way, `--bucketed`, sorts the padded batches by length
(a common cheaper alternative) for reference.

    python bench/packing.py                       # ~2-4 min on 2 shared cores
    python bench/packing.py --examples 1024 --hidden 256 --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--median-length", type=float, default=100.0, help="median of the lognormal lengths")
    p.add_argument("--sigma", type=float, default=0.75, help="sigma of the lognormal lengths")
    p.add_argument("--batch-size", type=int, default=8, help="examples per padded batch")
    p.add_argument("--rows", type=int, default=0, help="packed rows per batch (0: match the padded batches' real tokens)")
    p.add_argument("--pad-to-max", action="store_true", help="pad packed batches to --max-length instead of the batch max")
    p.add_argument("--bucketed", action="store_true", help="also time padded batches of length-sorted examples")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per way")
    p.add_argument("--chunk", type=int, default=4, help="steps per way before switching")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads")
    p.add_argument("--fused-ops", action="store_true",
                   help="every way's model with llmx.ops' kernels switched in (the packed rows use the packed attention)")
    return p.parse_args()


def synthesize(n: int, max_length: int, median: float, sigma: float, seed: int, vocab: int) -> list[dict]:
    """Encoded SFT examples with lognormal lengths in [8, max_length - 1] (as SftEncoder makes them:
    labels[i] is the token after input_ids[i]; prompt tokens unlearned; the last label is eos)."""
    import numpy as np

    from llmx.tokens import IGNORE_INDEX

    rng = np.random.RandomState(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, size=n)), 8, max_length - 1).astype(int)
    out = []
    for n_tok in lengths:
        tokens = rng.randint(5, vocab, size=n_tok + 1).tolist()  # the full text; inputs drop its last token
        prompt = int(rng.randint(2, max(3, n_tok // 2)))
        tokens[0], tokens[-1] = 1, 2  # bos ... eos
        labels = [IGNORE_INDEX] * (prompt - 1) + tokens[prompt:]
        out.append({"input_ids": tokens[:-1], "labels": labels})
    return out


def batches(items: list, size: int, seed: int, sort_key=None) -> list[list]:
    import numpy as np

    if sort_key is not None:  # bucketed: consecutive lengths, batches in random order
        order = sorted(range(len(items)), key=lambda i: sort_key(items[i]))
        groups = [order[i:i + size] for i in range(0, len(order), size)]
        return [[items[i] for i in groups[j]] for j in np.random.RandomState(seed).permutation(len(groups))]
    order = np.random.RandomState(seed).permutation(len(items))
    return [[items[i] for i in order[s:s + size]] for s in range(0, len(order), size)]


class Way:
    def __init__(self, name: str, batch_list: list, collate, model, opt):
        self.name, self.batch_list, self.collate = name, batch_list, collate
        self.model, self.opt = model, opt
        self.next = 0
        self.seconds = self.collate_seconds = 0.0
        self.real = self.total_slots = self.timed_steps = 0
        self.all_real = self.all_slots = 0
        self.losses: list[float] = []

    def done(self) -> bool:
        return self.next >= len(self.batch_list)

    def step(self, timed: bool) -> None:
        from llmx.engine.batching import NUM_TOKENS

        feats = self.batch_list[self.next]
        self.next += 1
        t0 = time.perf_counter()
        batch = self.collate(feats)
        batch.pop(NUM_TOKENS)  # the trainer's token bookkeeping, not a model input
        t_collate = time.perf_counter() - t0
        loss = self.model(**batch)[0]
        loss.backward()
        self.opt.step()
        self.opt.clear_grad()
        value = float(loss)  # waits for the step to finish
        dt = time.perf_counter() - t0
        real = sum(len(f["input_ids"]) for f in feats)
        slots = int(batch["input_ids"].shape[0] * batch["input_ids"].shape[1])
        self.all_real += real
        self.all_slots += slots
        self.losses.append(value)
        if timed:
            self.seconds += dt
            self.collate_seconds += t_collate
            self.real += real
            self.total_slots += slots
            self.timed_steps += 1


def main() -> None:
    args = parse()
    threads = str(args.threads)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = threads
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import numpy as np
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    from llmx.data.packing import pack_examples, packing_stats
    from llmx.engine.batching import PackedCollator, PadCollator

    paddle.set_device("cpu")
    vocab = 512
    examples = synthesize(args.examples, args.max_length, args.median_length, args.sigma, args.seed, vocab)
    lengths = np.array([len(e["input_ids"]) for e in examples])
    t0 = time.perf_counter()
    packs = pack_examples(examples, args.max_length)
    pack_seconds = time.perf_counter() - t0
    stats = packing_stats(packs, args.max_length)
    rows = args.rows or max(1, round(args.batch_size * lengths.mean() / args.max_length))

    def new_model():
        paddle.seed(args.seed)
        config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=int(args.hidden * 2.6875), vocab_size=vocab,
                             max_position_embeddings=args.max_length, seq_length=args.max_length,
                             pad_token_id=3, bos_token_id=1, eos_token_id=2)
        config.dtype = "float32"
        model = LlamaForCausalLM.from_config(config, dtype="float32")
        if args.fused_ops:
            from llmx.ops.patch import enable

            enable(model, "on")
        model.train()
        return model, paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters())

    ways = [Way("padded", batches(examples, args.batch_size, args.seed), PadCollator(3), *new_model()),
            Way("packed", batches(packs, rows, args.seed), PackedCollator(3, pad_to=args.max_length if args.pad_to_max else None),
                *new_model())]
    if args.bucketed:
        ways.append(Way("padded, length-bucketed", batches(examples, args.batch_size, args.seed,
                                                           sort_key=lambda e: len(e["input_ids"])), PadCollator(3),
                        *new_model()))

    print(f"{args.examples} synthetic SFT examples, lognormal lengths (median {args.median_length:g}, sigma {args.sigma:g}) "
          f"clipped to [8, {args.max_length - 1}]: mean {lengths.mean():.1f}, p50 {np.median(lengths):.0f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}")
    print(f"Llama hidden {args.hidden}, {args.layers} layers, vocab {vocab}, fused ops {'on' if args.fused_ops else 'off'}; CPU, {args.threads} thread(s); "
          f"padded: {args.batch_size} examples/batch; packed: {rows} rows/batch of <= {args.max_length} tokens "
          f"({'padded to max_length' if args.pad_to_max else 'padded to the batch max'}); "
          f"packing {stats['examples']} examples into {stats['sequences']} sequences took {pack_seconds * 1e3:.0f} ms")
    for w in ways:  # warm-up
        for _ in range(min(args.warmup, len(w.batch_list) - 1)):
            w.step(timed=False)
    while not all(w.done() for w in ways):
        for w in ways:
            for _ in range(args.chunk):
                if not w.done():
                    w.step(timed=True)

    header = f"{'way':<24} {'steps':>5} {'non-pad':>8} {'real tok':>9} {'timed s':>8} {'ms/step':>8} {'collate':>8} {'eff tok/s':>10} {'first->last loss':>17}"
    print(header + "\n" + "-" * len(header))
    for w in ways:
        print(f"{w.name:<24} {len(w.batch_list):>5} {w.all_real / w.all_slots:>8.3f} {w.all_real:>9} {w.seconds:>8.2f} "
              f"{w.seconds / max(w.timed_steps, 1) * 1e3:>8.1f} {w.collate_seconds / max(w.timed_steps, 1) * 1e3:>8.1f} {w.real / max(w.seconds, 1e-9):>10.0f} "
              f"{w.losses[0]:>8.3f}->{w.losses[-1]:.3f}")
    # Why packed is not faster still on CPU: the dense mask path computes every causal score of a row,
    # while only the in-example blocks are used (FlashMask on GPU skips the rest).
    def tri(n):
        return n * (n + 1) // 2

    for w in ways:
        used = sum(tri(n) for b in w.batch_list for f in b for n in f.get("seq_lens", [len(f["input_ids"])]))
        computed = sum(len(b) * tri(max(len(f["input_ids"]) for f in b)) for b in w.batch_list)
        print(f"{w.name}: {used / computed:.1%} of the causal attention scores computed are used")
    padded, packed = ways[0], ways[1]
    frac = packed.all_real / packed.all_slots
    speed = (packed.real / packed.seconds) / (padded.real / padded.seconds)
    print(f"packing: non-pad tokens {frac:.1%} packed vs {padded.all_real / padded.all_slots:.1%} padded (target >= 97% packed); "
          f"effective tokens/s ratio packed/padded {speed:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
