"""llmx overhead: `python launch.py` SFT vs the same SFT written directly on PaddleNLP's Trainer.

Both runs train the bundled tiny Llama (random init, same seed) on the bundled
demo data with the same tokenizer, encoding, data order and hyperparameters, on
CPU, in fresh processes (so both pay their imports), alternating A/B per round.
Reported: process wall time, steady-state step time (median over logging
intervals of interval_runtime / logging_steps, first interval skipped) and the
loss agreement at every logged step.

    python bench/overhead.py                    # 5 rounds x 200 steps, 2.5-4 min on 2 shared cores
    python bench/overhead.py --rounds 3 --steps 500 --threads 2
"""
from __future__ import annotations

import argparse, json, os, re, resource, statistics, subprocess, sys, tempfile, time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Phases read from PaddleNLP's own log lines, printed the same way by both runs.
TRAIN_START = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*\*\*\*\*\* Running training \*\*\*\*\*")
TRAIN_RUNTIME = re.compile(r"train_runtime: ([\d.]+)")


def direct(args) -> None:
    """The baseline a PaddleNLP user would write; only data reading/encoding and the
    sampler come from llmx, so that both runs see identical batches."""
    import paddle
    from omegaconf import OmegaConf
    from paddlenlp.trainer import Trainer, TrainerCallback, TrainingArguments
    from paddlenlp.transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmx.schema import TrainConfig, asset_path
    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.engine.trainer import SeededBatchSampler  # llmx's (seed, epoch) data order
    from llmx.stages.sft import DataConfig as SftDataConfig
    from llmx.tokens import pad_batch

    paddle.set_device("cpu")
    tok = AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    sizes = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/llama.yaml").sizes.tiny)
    config = LlamaConfig(**sizes)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):  # as llmx does for random init
        if getattr(tok, name, None) is not None:
            setattr(config, name, getattr(tok, name))
    config.dtype = "float32"
    paddle.seed(args.seed)
    model = LlamaForCausalLM.from_config(config, dtype="float32")

    d, t = SftDataConfig(), TrainConfig()  # the llmx defaults the launch.py run uses for what we don't pass
    encoder = SftEncoder(tok, max_length=d.max_length, src_length=d.src_length)
    train_set = [encoder.encode(c) for c in read_sft(asset_path("demo/sft_train.jsonl"))]

    def collate(features):
        return {k: paddle.to_tensor(v) for k, v in pad_batch(features, tok.pad_token_id).items()}

    rows = []

    class Record(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs and "interval_runtime" in logs:
                rows.append({"step": state.global_step, "loss": logs["loss"], "interval_s": logs["interval_runtime"]})

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self):
            return SeededBatchSampler(self.train_dataset, self.args.per_device_train_batch_size, seed=args.seed)

    out = Path(args.out)
    targs = TrainingArguments(
        output_dir=str(out), seed=args.seed, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        logging_steps=args.logging_steps, save_strategy="no", evaluation_strategy="no", disable_tqdm=True,
        report_to=["visualdl"], logging_dir=str(out / "visualdl"),  # VisualDL curves, as llmx writes (llmx.tracking)
        dataloader_num_workers=0, remove_unused_columns=False, device="cpu")
    SameOrderTrainer(model=model, args=targs, train_dataset=train_set, data_collator=collate,
                     callbacks=[Record()]).train()
    (out / "metrics.json").write_text(json.dumps(rows))


def timed(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one process; wall time, CPU time (user+sys: robust to other load on a shared
    machine) and a startup/train/teardown split from its log lines."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    start = datetime.strptime(TRAIN_START.search(proc.stdout).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    train = float(TRAIN_RUNTIME.search(proc.stdout).group(1))
    return {"wall": wall, "cpu": cpu, "startup": start - t0, "train": train, "after": wall - (start - t0) - train}


def step_times(rows: list[dict], logging_steps: int) -> tuple[float, float]:
    """(median, fastest) seconds/step over logging intervals; [0] is warm-up. The fastest interval
    is the one least disturbed by other processes: a cross-check when the machine is shared."""
    per_step = [r["interval_s"] / logging_steps for r in rows[1:]]
    return statistics.median(per_step), min(per_step)


def one_round(args, env: dict, tmp: Path, r: int, llmx_first: bool) -> dict:
    run_dir, out = tmp / f"llmx{r}", tmp / f"direct{r}"
    llmx_cmd = [sys.executable, "launch.py", f"seed={args.seed}", "device=cpu", f"stage.train.max_steps={args.steps}",
                f"stage.train.batch_size={args.batch_size}", f"stage.train.lr={args.lr}",
                f"stage.train.logging_steps={args.logging_steps}", "stage.train.save_steps=100000000",
                "stage.train.progress_bar=false", "stage.eval.enabled=false", f"hydra.run.dir={run_dir}",
                "verbose=true"]  # PaddleNLP's log lines on the console: the startup/train split is read from them
    direct_cmd = [sys.executable, "bench/overhead.py", "--direct", "--out", str(out), "--seed", str(args.seed),
                  "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                  "--logging-steps", str(args.logging_steps)]
    res = {}
    for name in (("llmx", "direct") if llmx_first else ("direct", "llmx")):
        res[name] = timed(llmx_cmd if name == "llmx" else direct_cmd, env, tmp / f"{name}{r}.log")
    res["llmx"]["rows"] = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    res["direct"]["rows"] = json.loads((out / "metrics.json").read_text())
    for v in res.values():
        v["step"], v["best"] = step_times(v["rows"], args.logging_steps)
    a, b = ({x["step"]: x["loss"] for x in res[k]["rows"]} for k in ("llmx", "direct"))
    res["loss_diff"] = max(abs(a[s] - b[s]) for s in a.keys() & b.keys()) if a.keys() & b.keys() else float("nan")
    res["steps_compared"] = len(a.keys() & b.keys())
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    # 1 thread by default: on a shared 2-core machine, multi-threaded OMP steps swing 2-3x with outside load.
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads, the same for both runs")
    p.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)  # internal: the baseline process
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.direct:
        return direct(args)

    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    print(f"tiny Llama SFT on CPU: {args.steps} steps, batch {args.batch_size}, lr {args.lr}, "
          f"log every {args.logging_steps}, {args.threads} threads, {args.rounds} rounds (alternating order)")
    cols = [("wall s", "wall", 1), ("cpu s", "cpu", 1), ("step ms", "step", 1e3)]
    hdr = "round " + "".join(f"| {c + ' llmx':>12} {'direct':>7} {'ratio':>6} " for c, _, _ in cols) + "| loss max|diff|"
    print(hdr + "\n" + "-" * len(hdr))

    def row(label: str, pick, ratio) -> str:  # pick(name, key): a llmx/direct value; ratio(key): llmx/direct
        return f"{label:<6}" + "".join(f"| {pick('llmx', k) * u:>12.2f} {pick('direct', k) * u:>7.2f} "
                                      f"{ratio(k):>6.3f} " for _, k, u in cols)

    rounds = []
    with tempfile.TemporaryDirectory(prefix="llmx-overhead-") as tmp:
        for r in range(args.rounds):  # alternate who goes first, so drift in machine load hits both
            res = one_round(args, env, Path(tmp), r, llmx_first=r % 2 == 0)
            rounds.append(res)
            print(row(str(r + 1), lambda n, k: res[n][k], lambda k: res["llmx"][k] / res["direct"][k])
                  + f"| {res['loss_diff']:.2e} ({res['steps_compared']} steps)",
                  flush=True)
    med = lambda name, key: statistics.median(x[name][key] for x in rounds)
    ratio = lambda key: statistics.median(x["llmx"][key] / x["direct"][key] for x in rounds)
    print(row("median", med, ratio) + "|  (ratios: median of the per-round ratios)")
    print("\nwhere the wall time goes (median s): launch -> 'Running training' | train_runtime | after training")
    for name in ("llmx", "direct"):
        print(f"  {name:>6}: {med(name, 'startup'):7.2f} | {med(name, 'train'):7.2f} | {med(name, 'after'):7.2f}")
    worst = max(x["loss_diff"] for x in rounds)
    print(f"losses: max |llmx - direct| = {worst:.2e} at the same steps, all rounds ("
          + ("same init, data order and math" if worst < 1e-4 else "NOT the same computation: check data order/init") + ")")
    print(f"fastest-interval step time: llmx {med('llmx', 'best') * 1e3:.2f} ms, direct {med('direct', 'best') * 1e3:.2f} ms, "
          f"ratio {ratio('best'):.3f} (less sensitive to other load than the median)")
    print(f"overhead: step-time ratio {ratio('step'):.3f} (target <= 1.01), wall-time ratio {ratio('wall'):.2f}, "
          f"cpu-time ratio {ratio('cpu'):.2f}")


if __name__ == "__main__":
    main()
