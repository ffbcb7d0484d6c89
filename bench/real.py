"""SFT on the real checkpoint, llmx against transformers + PyTorch: tokens/s side by side, at 1 thread and all cores.

The model is SmolLM2-135M-Instruct (Llama, vocabulary 49,152), the Q4_1 GGUF the test suite fetches by pip
(tests/real_model.py); both sides load that same file and dequantize it to float32 (llmx through its GGUF
conversion, transformers through `gguf_file=`). The job is llmx's SFT of the bundled demo chats, packed
(`stage.zero_padding=true`) into rows of `--seq` tokens, `--rows` rows per step, AdamW with gradient clipping at 1.0,
full fine-tuning and LoRA (r 8, alpha 16, every projection of every layer). Each side runs in its own process with
the same thread count in its environment (OMP_NUM_THREADS, MKL_NUM_THREADS; torch.set_num_threads):
- llmx: `python launch.py` as a user runs it; a step's time is its logged interval (collation included);
- transformers + PyTorch: `LlamaForCausalLM` (SDPA attention), peft's LoRA, torch.optim.AdamW, on the very batches
  llmx trains on (the same token ids, rows, lengths, positions and block-diagonal masks, built by llmx's own
  encoder, packer, sampler and collator in a third process); a step's time is batch tensors -> optimizer step.
The first `--warmup` steps of each run are not timed. The bench checks that the batches and weights are the same:
each step's real-token count must match llmx's, and both sides' first loss (before any update) must agree.

It also prints llmx's achieved GFLOP/s (full: 6 x parameters x real tokens per step; LoRA: 4 x base parameters
x tokens for the forward and the input gradients, + 6 x adapter parameters x tokens) against the single-GEMM peak
of this machine: a float32 matmul timed in Paddle (as llmx runs it) and in PyTorch at the same thread count.

    python bench/real.py                          # full + LoRA, 1 thread and all cores: about 13 min on 2 cores
    python bench/real.py --methods full --threads 1 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # llmx's llama targets
LR = {"full": 1e-5, "lora": 1e-4}
NEEDS = ("the transformers side needs torch, transformers 4.55.4, accelerate and gguf (pip install -e \".[bench]\"; "
         "peft for LoRA)")


def llmx_overrides(args, method: str, gguf: Path) -> list[str]:
    """The SFT job, as launch.py overrides (the batch builder composes the same config)."""
    stage = "lora" if method == "lora" else "sft"
    return [f"stage={stage}", "model=llama", f"model.name_or_path={gguf}", f"model.fused_ops={args.fused_ops}",
            "device=cpu", f"seed={args.seed}", "stage.zero_padding=true", f"stage.data.max_length={args.seq}",
            f"stage.train.batch_size={args.rows}", f"stage.train.max_steps={args.warmup + args.steps}",
            f"stage.train.lr={LR[method]}", "stage.train.lr_scheduler=constant", "stage.train.warmup_steps=0",
            "stage.train.weight_decay=0.0", "stage.train.max_grad_norm=1.0", "stage.train.logging_steps=1",
            "stage.train.save_steps=100000000", "stage.train.progress_bar=false", "stage.eval.enabled=false"]


def thread_env(threads: int) -> dict:
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def run_child(cmd: list[str], env: dict, what: str) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"real: {what} failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


# ------------------------------------------------------------------ the llmx side

def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_llmx(args, method: str, threads: int, gguf: Path, tmp: Path, extra: list[str]) -> dict:
    """launch.py in a child process. Besides each step's logged interval, its CPU seconds: the child's CPU time
    read each time metrics.jsonl gains a line (polled every 20 ms), which stays near the uncontended step time at
    1 thread when other jobs share the cores."""
    run_dir = tmp / f"llmx-{method}-{threads}-{time.monotonic_ns()}"
    metrics = run_dir / "metrics.jsonl"
    cmd = [sys.executable, "launch.py", *llmx_overrides(args, method, gguf), *extra, f"hydra.run.dir={run_dir}"]
    with open(tmp / "llmx.log", "w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=thread_env(threads), stdout=log, stderr=subprocess.STDOUT)
        marks = []  # the child's CPU seconds when line k of metrics.jsonl appeared
        while proc.poll() is None:
            lines = metrics.read_text().count("\n") if metrics.is_file() else 0
            if lines > len(marks):
                try:
                    marks += [process_cpu_seconds(proc.pid)] * (lines - len(marks))
                except (FileNotFoundError, ProcessLookupError):
                    break
            time.sleep(0.02)
        if proc.wait() != 0:
            log.seek(0)
            sys.exit(f"real: llmx {method} at {threads} thread(s) failed (exit {proc.returncode}):\n{log.read()[-3000:]}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [k for k, r in enumerate(rows) if "loss" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    cpu = [marks[k] - marks[k - 1] for k in train[args.warmup:] if 0 < k < len(marks)]
    rows = [rows[k] for k in train]
    return {"step_s": [r["interval_s"] for r in rows[args.warmup:]], "cpu_s": cpu, "tokens": [r["tokens"] for r in rows],
            "first_loss": rows[0]["loss"], "trainable": summary["trainable_params"], "total": summary["total_params"],
            "fused": summary.get("fused_ops")}


def build_batches(args) -> None:
    """The batches llmx's sft runner trains on, with its own encoder, packer, sampler and collator (the
    bench checks the result against the llmx run's token counts and first loss)."""
    import numpy as np
    from llmx.data.encoders import sft_encoder
    from llmx.data.packing import pack_examples
    from llmx.engine.batching import PackedCollator
    from llmx.engine.model import build_tokenizer
    from llmx.engine.trainer import SeededBatchSampler
    from llmx.plan import compose_config
    from llmx.stages import sft

    cfg = compose_config(llmx_overrides(args, "full", Path(args.gguf)))
    tokenizer = build_tokenizer(cfg.model)
    encoder = sft_encoder(tokenizer, cfg.stage.data.max_length, cfg.stage.data.src_length)
    packs = pack_examples([encoder.encode(c) for c in sft.prepare(cfg)["train"]], cfg.stage.data.max_length)
    order = SeededBatchSampler(packs, batch_size=cfg.stage.train.batch_size, seed=cfg.seed)._batches()
    collator = PackedCollator(tokenizer.pad_token_id)
    out = {}
    for step, batch in enumerate(order[:args.warmup + args.steps]):
        features = [packs[i] for i in batch]
        for key, value in collator.arrays(features).items():
            out[f"{step}/{key}"] = value
        out[f"{step}/tokens"] = np.array(sum(len(f["input_ids"]) for f in features))
    np.savez(args.out, **out)


# ------------------------------------------------------------------ the transformers + PyTorch side

def torch_side(args) -> None:
    import numpy as np
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        sys.exit(f"real: {e}; {NEEDS}")
    torch.set_num_threads(args.threads)
    gguf = Path(args.gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    total = sum(p.numel() for p in model.parameters())
    if args.method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            sys.exit(f"real: peft is not installed (pip install --no-deps peft==0.15.2): {NEEDS}")
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                                 task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR[args.method], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    data = np.load(args.batches)
    step_s, cpu_s, tokens, learned, losses = [], [], [], [], []
    for step in range(args.warmup + args.steps):
        start, cpu = time.perf_counter(), time.process_time()
        batch = {k: torch.from_numpy(data[f"{step}/{k}"]) for k in ("input_ids", "labels", "position_ids",
                                                                     "attention_mask")}
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits
        # llmx's labels are already shifted (labels[i] follows input_ids[i]), so no shift here
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(),
                                                 batch["labels"].view(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - start)
        cpu_s.append(time.process_time() - cpu)
        tokens.append(int(data[f"{step}/tokens"]))
        learned.append(int((data[f"{step}/labels"] != -100).sum()))
        losses.append(loss.item())
    print(json.dumps({"step_s": step_s[args.warmup:], "cpu_s": cpu_s[args.warmup:], "tokens": tokens, "first_loss": losses[0],
                      "learned": learned, "head": model.get_output_embeddings().weight.numel(),
                      "trainable": sum(p.numel() for p in params), "total": total}))


# ------------------------------------------------------------------ single-GEMM peak

def gemm_side(args) -> None:
    """Best of --reps float32 [n, n] @ [n, n] in one framework at the environment's thread count."""
    n = args.gemm_n
    if args.framework == "paddle":
        import importlib

        importlib.import_module("llmx")  # llmx's MKL setting (MKL_DEBUG_CPU_TYPE), as every llmx run has it
        import paddle

        paddle.set_device("cpu")
        a, b = paddle.randn([n, n], dtype="float32"), paddle.randn([n, n], dtype="float32")
        run = lambda: paddle.matmul(a, b).numpy()  # noqa: E731 - .numpy() waits for the result
    else:
        import torch

        torch.set_num_threads(args.threads)
        a, b = torch.randn(n, n), torch.randn(n, n)
        run = lambda: torch.matmul(a, b)  # noqa: E731
    best = float("inf")
    for _ in range(args.reps + 1):  # the first is warm-up
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"gflops": 2 * n ** 3 / best / 1e9}))


def gemm_peak(framework: str, threads: int, n: int) -> float:
    out = run_child([sys.executable, str(Path(__file__)), "--gemm", "--framework", framework, "--gemm-n", str(n),
                     "--threads", str(threads)], thread_env(threads), f"{framework} GEMM")
    return json.loads(out.strip().splitlines()[-1])["gflops"]


# ------------------------------------------------------------------ the comparison

def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def threads_extra(threads: int) -> list[str]:
    """`runtime.threads=N` where this llmx has the key (it sets the thread count before Paddle starts), so the
    run records it; the environment sets the same count either way."""
    from omegaconf import OmegaConf

    from llmx.plan import compose_config

    has_key = OmegaConf.select(compose_config([]), "runtime.threads", default=None) is not None
    return [f"runtime.threads={threads}"] if has_key else []


def step_flops(args, method: str, lx: dict, pt: dict) -> tuple[float, float, float, str]:
    """Matmul FLOPs of llmx's timed steps: (by the formula, what llmx computes, learned share, the formula). The
    formula counts the LM head on every token; llmx's fused loss runs it on the learned positions only."""
    tokens, learned = sum(lx["tokens"][args.warmup:]), sum(pt["learned"][args.warmup:])
    if method == "full":
        per_token, head, formula = 6.0 * lx["total"], 6.0 * pt["head"], "6 x params x tokens"
    else:  # frozen weights: forward and input gradients only; adapters: also their weight gradients
        frozen = lx["total"] - lx["trainable"]
        per_token, head = 4.0 * frozen + 6.0 * lx["trainable"], 4.0 * pt["head"]
        formula = "(4 x frozen params + 6 x adapter params) x tokens"
    return per_token * tokens, per_token * tokens - head * (tokens - learned), learned / tokens, formula


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each pair, alternating which side goes first")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--fused-ops", default="on", choices=("auto", "on", "off"), help="llmx's model.fused_ops")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=20, help="GEMM repetitions (the best counts)")
    for internal in ("--torch", "--gemm", "--build-batches"):
        ap.add_argument(internal, action="store_true", help=argparse.SUPPRESS)
    for internal in ("--gguf", "--batches", "--out", "--method", "--framework"):
        ap.add_argument(internal, help=argparse.SUPPRESS)
    args = ap.parse_args()
    # this script's own folder is sys.path[0], where bench/peft.py would shadow the peft package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    if args.torch or args.gemm:
        args.threads = int(args.threads)
        return torch_side(args) if args.torch else gemm_side(args)
    if args.build_batches:
        return build_batches(args)

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    from real_model import real_gguf

    gguf, why = real_gguf()
    if gguf is None:
        sys.exit(f"real: {why}")
    cores = os.cpu_count() or 1
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    methods = args.methods.split(",")
    print(f"machine: {cores} cores, {cpu_model()}; load average {os.getloadavg()[0]:.2f}")
    print(f"model: {gguf.name} (float32 on both sides); SFT of the demo chats packed into {args.rows} rows x "
          f"{args.seq} tokens per step, {args.warmup} warm-up + {args.steps} timed steps per run, "
          f"llmx model.fused_ops={args.fused_ops}")
    with tempfile.TemporaryDirectory(prefix="llmx-real-") as tmp_name:
        tmp = Path(tmp_name)
        batches = tmp / "batches.npz"
        run_child([sys.executable, str(Path(__file__)), "--build-batches", "--gguf", str(gguf), "--out", str(batches),
                   *sum(([f"--{k}", str(getattr(args, k))] for k in ("rows", "seq", "seed", "steps", "warmup")), []),
                   "--fused-ops", args.fused_ops], thread_env(1), "building the batches")
        results = []
        for threads in thread_counts:
            peaks = {fw: gemm_peak(fw, threads, args.gemm_n) for fw in ("paddle", "torch")}
            print(f"\n{threads} thread(s): single-GEMM peak ({args.gemm_n}^3 float32) paddle {peaks['paddle']:.1f} "
                  f"GFLOP/s, torch {peaks['torch']:.1f} GFLOP/s", flush=True)
            extra = threads_extra(threads)
            for method in methods:
                for r in range(args.rounds):
                    sides = {}
                    for side in (("llmx", "torch") if r % 2 == 0 else ("torch", "llmx")):
                        if side == "llmx":
                            sides[side] = run_llmx(args, method, threads, gguf, tmp, extra)
                        else:
                            out = run_child([sys.executable, str(Path(__file__)), "--torch", "--method", method,
                                             "--threads", str(threads), "--gguf", str(gguf), "--batches", str(batches),
                                             "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                            thread_env(threads), f"transformers {method} at {threads} thread(s)")
                            sides[side] = json.loads(out.strip().splitlines()[-1])
                    results.append(report(args, method, threads, r, sides, peaks))
    summarise(results)


def report(args, method: str, threads: int, r: int, sides: dict, peaks: dict) -> dict:
    lx, pt = sides["llmx"], sides["torch"]
    if lx["tokens"] != pt["tokens"]:
        sys.exit(f"real: the batches differ: llmx trained on {lx['tokens']} real tokens per step, the transformers "
                 f"side on {pt['tokens']}")
    tokens = lx["tokens"][args.warmup:]
    row = {"method": method, "threads": threads, "round": r}
    for name, side in sides.items():
        side_tps = [t / s for t, s in zip(tokens, side["step_s"])]
        row[name] = {"tps": statistics.median(side_tps), "best": max(side_tps), "step": statistics.median(side["step_s"]),
                     "cpu": statistics.median(side["cpu_s"]) if side["cpu_s"] else float("nan")}
    row["ratio"] = row["llmx"]["tps"] / row["torch"]["tps"]
    row["cpu_ratio"] = row["torch"]["cpu"] / row["llmx"]["cpu"]
    print(f"  {method:4} round {r}: llmx {row['llmx']['tps']:6.1f} tokens/s ({row['llmx']['step']:.2f} s/step, "
          f"{row['llmx']['cpu']:.2f} CPU s/step), transformers {row['torch']['tps']:6.1f} tokens/s "
          f"({row['torch']['step']:.2f} s/step, {row['torch']['cpu']:.2f} CPU s/step): llmx/transformers "
          f"{row['ratio']:.2f}x (CPU time: {row['cpu_ratio']:.2f}x); load average {os.getloadavg()[0]:.1f}", flush=True)
    model_flops, computed, learned, formula = step_flops(args, method, lx, pt)
    seconds = sum(lx["step_s"])
    gflops, done = model_flops / seconds / 1e9, computed / seconds / 1e9
    loss_diff = abs(lx["first_loss"] - pt["first_loss"]) / abs(pt["first_loss"])
    print(f"       llmx {gflops:.1f} GFLOP/s by {formula} ({100 * gflops / peaks['paddle']:.0f}% of paddle's GEMM "
          f"peak, {100 * gflops / peaks['torch']:.0f}% of torch's); {done:.1f} GFLOP/s of the matmuls it computes (its "
          f"loss runs the LM head on the {100 * learned:.1f}% learned positions only: "
          f"{100 * done / peaks['paddle']:.0f}% of paddle's peak)", flush=True)
    print(f"       same job: trainable {lx['trainable']:,} vs {pt['trainable']:,}; first loss {lx['first_loss']:.5f} "
          f"vs {pt['first_loss']:.5f} (rel. diff {loss_diff:.1e}); llmx kernels: {', '.join(lx['fused'] or []) or 'none'}",
          flush=True)
    if loss_diff > 1e-3:
        print(f"       WARNING: the first losses differ by {loss_diff:.1e}: the two sides do not train the same thing")
    return row


def summarise(results: list[dict]) -> None:
    """Per configuration: the median over rounds, and the ratio of each side's fastest step (the one least slowed
    by other jobs on a shared machine)."""
    print("\nmethod threads  llmx tokens/s  transformers tokens/s  ratio (median over rounds; spread)  fastest steps' ratio")
    medians = []
    for key in sorted({(r["method"], r["threads"]) for r in results}):
        rows = [r for r in results if (r["method"], r["threads"]) == key]
        ratios = [r["ratio"] for r in rows]
        medians.append(statistics.median(ratios))
        best = max(r["llmx"]["best"] for r in rows) / max(r["torch"]["best"] for r in rows)
        print(f"{key[0]:6} {key[1]:7d}  {statistics.median(r['llmx']['tps'] for r in rows):13.1f}  "
              f"{statistics.median(r['torch']['tps'] for r in rows):21.1f}  {medians[-1]:.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}){'':20} {best:.2f}x")
    print(f"real: llmx/transformers tokens/s, worst configuration {min(medians):.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
