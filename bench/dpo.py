"""llmx DPO vs the same DPO written directly on PaddleNLP trl's DPOTrainer; LoRA-DPO vs full DPO memory.

Both ways train the bundled tiny Llama (random init, same seed; the reference a second copy of it)
on the bundled preference data with the same encoding (trl's), packing, data order and
hyperparameters, on CPU, in fresh processes, alternating which goes first per round. Reported:
steady-state step time (median over logging intervals of interval_s / logging_steps, first
interval skipped), its ratio llmx / direct (target <= 1.02), the loss agreement at every logged
step, and the peak resident memory (ru_maxrss of each process) of full DPO and LoRA-DPO through
llmx, with the parameters each run holds (`process_params`).

    python bench/dpo.py                      # 3 rounds x 60 steps, about 3 minutes on 2 shared cores
    python bench/dpo.py --rounds 1 --steps 30
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def direct(args) -> None:
    """The baseline a PaddleNLP user would write: trl's DPOTrainer on a random-init Llama and a reference
    copy. Data reading/encoding/packing and the sampler come from llmx so both see identical batches; the
    reference is passed unwrapped (trl's fleet wrapping fails in one CPU process, as in llmx)."""
    import paddle
    from omegaconf import OmegaConf
    from paddlenlp.trainer import TrainerCallback, TrainingArguments
    from paddlenlp.transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from paddlenlp.trl import DPOTrainer

    from llmx.align.preference import dpo_config
    from llmx.schema import TrainConfig, asset_path
    from llmx.data.formats import read_preference
    from llmx.data.preference import PreferenceCollator, encode_trl, pack
    from llmx.engine.trainer import SeededBatchSampler

    paddle.set_device("cpu")
    tok = AutoTokenizer.from_pretrained(asset_path("tiny_tokenizer"))
    sizes = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/llama.yaml").sizes.tiny)

    def model():
        config = LlamaConfig(**sizes)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(config, name, getattr(tok, name))
        config.dtype = "float32"
        paddle.seed(args.seed)
        return LlamaForCausalLM.from_config(config, dtype="float32")

    policy, reference = model(), model()
    stage = OmegaConf.merge(OmegaConf.load(ROOT / "conf/stage/dpo.yaml"), {"loss_type": "sigmoid", "beta": 0.1,
                            "label_smoothing": 0.0, "simpo_gamma": 0.5, "dpop_lambda": 50.0, "pref_loss_ratio": 1.0,
                            "sft_loss_ratio": None, "reference_free": None})
    tok.llmx_chat_template = None  # the tiny tokenizer has none: llmx's plain template, as stage=dpo renders it
    packs, _ = pack(encode_trl(read_preference(asset_path("demo/dpo_train.jsonl")), tok, 128, 64), tok, 128, True)
    t = TrainConfig()
    rows = []

    class Record(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs and "interval_runtime" in logs:
                rows.append({"step": state.global_step, "loss": logs["loss"], "interval_s": logs["interval_runtime"]})

    class Direct(DPOTrainer):
        def _wrap_ref_model(self, m):
            return m

        def _get_train_sampler(self):
            return SeededBatchSampler(self.train_dataset, self.args.per_device_train_batch_size, seed=args.seed)

    collate = PreferenceCollator(128)

    def collator(features):  # trl's collate_fn as tensors (llmx's bookkeeping keys dropped)
        return {k: v for k, v in collate(features).items() if k not in ("num_tokens", "local_targets")}

    out = Path(args.out)
    targs = TrainingArguments(
        output_dir=str(out), seed=args.seed, max_steps=args.steps, per_device_train_batch_size=4, learning_rate=1e-3,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=0, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        logging_steps=args.logging_steps, save_strategy="no", evaluation_strategy="no", disable_tqdm=True,
        report_to=["visualdl"], logging_dir=str(out / "visualdl"), dataloader_num_workers=0,
        remove_unused_columns=False, device="cpu")
    Direct(model=policy, ref_model=reference, dpo_config=dpo_config(stage, lora=False), args=targs,
           train_dataset=packs, data_collator=collator, callbacks=[Record()]).train()
    (out / "metrics.json").write_text(json.dumps(rows))


def run(cmd: list[str], threads: int) -> tuple[int, float]:
    """Run a process; return (exit code, its peak resident memory in MiB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return proc.returncode, usage.ru_maxrss / 1024


def step_time(rows: list[dict], logging_steps: int) -> float:
    times = [r["interval_s"] / logging_steps for r in rows][1:]
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.direct:
        return direct(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    common = ["stage=dpo", f"stage.train.max_steps={args.steps}", f"stage.train.logging_steps={args.logging_steps}",
              "stage.train.warmup_steps=0", "stage.eval.enabled=false", "stage.train.progress_bar=false",
              f"stage.train.save_steps={args.steps}", f"seed={args.seed}"]
    ratios, worst = [], 0.0
    print(f"{'round':>5} {'way':>8} {'step ms':>8} {'peak MiB':>9}")
    for r in range(args.rounds):
        order = ["llmx", "direct"] if r % 2 == 0 else ["direct", "llmx"]
        res = {}
        for way in order:
            out = tmp / f"{way}{r}"
            if way == "llmx":
                code, peak = run([sys.executable, "launch.py", *common, f"hydra.run.dir={out}"], args.threads)
                rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            else:
                code, peak = run([sys.executable, __file__, "--direct", "--out", str(out), "--steps", str(args.steps),
                                  "--logging-steps", str(args.logging_steps), "--seed", str(args.seed)], args.threads)
                rows = json.loads((out / "metrics.json").read_text())
            if code:
                sys.exit(f"{way} failed ({code})")
            res[way] = rows
            print(f"{r:>5} {way:>8} {1000 * step_time(rows, args.logging_steps):>8.1f} {peak:>9.0f}")
        a, b = res["llmx"], res["direct"]
        assert [x["step"] for x in a] == [x["step"] for x in b], "different logged steps"
        worst = max(worst, max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b)))
        ratios.append(step_time(a, args.logging_steps) / step_time(b, args.logging_steps))
    print(f"dpo: step-time ratio llmx/direct median {statistics.median(ratios):.3f} (per round: "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; target <= 1.02); losses agree to {worst:.1e} relative")

    mem = {}
    for method in ("none", "lora"):
        out = tmp / f"mem_{method}"
        code, peak = run([sys.executable, "launch.py", *common, f"stage.peft.method={method}", f"hydra.run.dir={out}"],
                         args.threads)
        if code:
            sys.exit(f"memory run {method} failed ({code})")
        mem[method] = (peak, json.loads((out / "summary.json").read_text())["process_params"])
    (full_peak, full_params), (lora_peak, lora_params) = mem["none"], mem["lora"]
    print(f"dpo: peak memory full {full_peak:.0f} MiB ({full_params:,} parameters held), LoRA {lora_peak:.0f} MiB "
          f"({lora_params:,}); LoRA/full parameters {lora_params / full_params:.2f}, peak RSS {lora_peak / full_peak:.2f} "
          "(the tiny model's weights are a small part of a process's memory)")


if __name__ == "__main__":
    main()
