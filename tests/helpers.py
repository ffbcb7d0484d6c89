"""Test helpers, in one place: run `python launch.py` (and `python -m llmx ...`) as a user would,
read run directories, compose configs in-process.

Subprocess runs can get a `sitecustomize` (through PYTHONPATH) that, at exit, writes
HEAVY_IMPORT_MARK to stderr if paddle or paddlenlp was imported: config errors, `--help`
and `--cfg job` must answer without them. The run itself is unchanged.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Short, quiet runs: tests override only what they are about.
FAST = ["stage.train.progress_bar=false"]
HEAVY_IMPORT_MARK = "TEST-WATCH: heavy modules imported:"

_WATCH = f'''import atexit, sys

def _report_heavy_imports():
    heavy = [m for m in ("paddle", "paddlenlp") if m in sys.modules]
    if heavy:
        sys.stderr.write({HEAVY_IMPORT_MARK!r} + " " + ", ".join(heavy) + "\\n")

atexit.register(_report_heavy_imports)
'''


def launch(*overrides: str, timeout: float = 600, check: bool = True, cwd: Path = REPO,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python launch.py <overrides>`, as a user would (from the repo root by default)."""
    proc = subprocess.run([sys.executable, str(REPO / "launch.py"), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.py {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def llmx_command(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m llmx <args>` from the repo root."""
    return subprocess.run([sys.executable, "-m", "llmx", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def train_losses(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training record in a run's metrics.jsonl."""
    return [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


def closing_lines(console: str) -> list[str]:
    """The lines a run's console output ends with, from its `run dir:` line on (llmx.console.summary_lines)."""
    lines = console.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("run dir: "))
    return [line for line in lines[start:] if line.strip()]


def empty_folders(run: Path) -> list[str]:
    """Folders under a run dir that hold nothing (a run leaves none)."""
    return [str(p.relative_to(run)) for p in sorted(Path(run).rglob("*")) if p.is_dir() and not any(p.iterdir())]


def compose(*overrides: str):
    """The config launch.py would compose (Hydra's compose API, in this process; no validation)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmx.schema import CONF_DIR
    from llmx.stages import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def saved_model_loss(model_dir, adapter=None, family: str | None = None, examples: int = 16) -> float:
    """The loss of a saved model (plus a LoRA adapter), in this process, on the first demo eval examples.
    With `family`, llmx's fixes of that family's upstream bugs go in first, as when llmx builds it."""
    import paddle
    from paddlenlp.peft import LoRAModel
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from llmx.schema import asset_path
    from llmx.data.formats import read_sft
    from llmx.data.encoders import sft_encoder
    from llmx.families import FAMILIES, fixes
    from llmx.tokens import pad_batch

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if family is not None:
        fixes.apply(FAMILIES[family].fixes, fixes.BEFORE_BUILD)
        tokenizer.llmx_encoding = FAMILIES[family].encoding  # as llmx.engine.model.build_tokenizer marks it
    # (a family whose class llmx writes, llmx.models, is not among PaddleNLP's Auto classes)
    model = (FAMILIES[family].load_class() if family else AutoModelForCausalLM).from_pretrained(str(model_dir))
    if adapter is not None:
        model = LoRAModel.from_pretrained(model, str(adapter))
    model.eval()
    encoder = sft_encoder(tokenizer, 128, 96)
    encoded = [encoder.encode(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))[:examples]]
    arrays = encoder.layout.batch(encoded) if hasattr(encoder, "layout") else pad_batch(encoded, tokenizer.pad_token_id)
    batch = {k: paddle.to_tensor(v) for k, v in arrays.items()}
    with paddle.no_grad():
        out = model(**batch)
    return float(out[0] if isinstance(out, tuple) else out.loss)


def token_nll(logits, labels) -> tuple[float, int]:
    """Numpy, in float64: the sum of -log p(label) over the positions whose label is not ignored (labels
    already shifted: position i predicts labels[i]), and the number of those positions."""
    import numpy as np

    labels = np.asarray(labels)
    keep = labels != -100
    z = np.asarray(logits, dtype="float64")[keep]
    z = z - z.max(axis=-1, keepdims=True)
    logp = z[np.arange(len(z)), labels[keep]] - np.log(np.exp(z).sum(axis=-1))
    return float(-logp.sum()), int(keep.sum())


def token_mean_eval_loss(model_dir, batch_size: int = 16) -> float:
    """The mean over every target token of the demo SFT eval file (as the sft stage encodes it) of a saved
    model's loss, in this process: PaddleNLP's logits, numpy's cross-entropy."""
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from llmx.schema import asset_path
    from llmx.data.formats import read_sft
    from llmx.data.sft import SftEncoder
    from llmx.tokens import pad_batch

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    encoder = SftEncoder(tokenizer, 128, 96)
    examples = [encoder.encode(c) for c in read_sft(asset_path("demo/sft_eval.jsonl"))]
    total, count = 0.0, 0
    with paddle.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = pad_batch(examples[i:i + batch_size], tokenizer.pad_token_id)
            out = model(input_ids=paddle.to_tensor(batch["input_ids"]),
                        attention_mask=paddle.to_tensor(batch["attention_mask"]))
            logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
            s, n = token_nll(logits.astype("float32").numpy(), batch["labels"])
            total, count = total + s, count + n
    return total / count


def input_error(*overrides: str) -> str:
    """The one line launch.py prints for a bad config or bad data, found in this process: compose,
    validate, then the stage's paddle-free prepare (the same code launch.py runs before paddle)."""
    from llmx.compat.hydra import config_error_line
    from llmx.stages import stage_module, validate

    try:
        cfg = compose(*overrides)
        validate(cfg)
        stage_module(cfg.stage.runner).prepare(cfg)
    except Exception as ex:  # noqa: BLE001 - Hydra's, OmegaConf's and our errors
        line = config_error_line(ex)
        if line is None:
            raise
        return "llmx: " + line
    raise AssertionError(f"{overrides}: no error")


def run_python(*argv: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python <argv>` from the repo root, watched for heavy imports."""
    watch = tmp_path / "_import_watch"
    watch.mkdir(parents=True, exist_ok=True)
    (watch / "sitecustomize.py").write_text(_WATCH)
    path = [str(watch), str(REPO / "tests"), os.environ.get("PYTHONPATH")]  # tests/ for scripts importing helpers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    env.pop("HYDRA_FULL_ERROR", None)  # it turns our one-line errors back into tracebacks
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_launch(*args: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_python("launch.py", *args, tmp_path=tmp_path, timeout=timeout)


def config_error(*overrides: str, tmp_path: Path, multirun: bool = False) -> str:
    """Run a launch that must fail on its input; check exit code 2, no heavy import and a
    single non-empty stderr line, and return that line."""
    where = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
    proc = run_launch(*(["-m"] if multirun else []), *overrides, where, tmp_path=tmp_path)
    report = f"launch.py {' '.join(overrides)} -> exit {proc.returncode}\n--- stderr:\n{proc.stderr}"
    assert HEAVY_IMPORT_MARK not in proc.stderr, "paddle imported before the error\n" + report
    assert proc.returncode == 2, report
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, report
    assert "warning" not in lines[0].lower() and "Traceback" not in lines[0], report
    assert lines[0].startswith("llmx: "), report
    return lines[0]


def run_matrix(runs: dict, out: Path, processes: int = 1) -> Path:
    """Several runs ({name: overrides}) one after the other in one process, or in one launch of
    `processes` ranks (tests/runs/run_matrix.py): out/<name> is each run's directory."""
    cmd = [sys.executable, str(REPO / "tests" / "runs" / "run_matrix.py"), "--out", str(out)]
    for name, overrides in runs.items():
        cmd += ["--run", name, ";".join(overrides)]
    if processes > 1:
        cmd[1:1] = ["-m", "paddle.distributed.launch", "--log_level", "ERROR", "--nproc_per_node", str(processes),
                    "--log_dir", str(out / "logs")]
    env = dict(os.environ, PADDLE_DISTRI_BACKEND="gloo")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    errors = sorted(Path(out).glob("*/error.rank*.txt"))
    assert proc.returncode == 0 and not errors, (errors and errors[0].read_text()[-3000:]) or proc.stderr[-3000:]
    return Path(out)


def run_in_process(run_dir, *overrides: str) -> dict:
    """What `python launch.py <overrides> hydra.run.dir=<run_dir>` runs after validation, in this process
    (no second interpreter start-up: ~10 s saved per run)."""
    from llmx.engine.context import create_context
    from llmx.run import run_stage
    from llmx.stages import stage_module, validate

    cfg = compose(*overrides)
    if "train" in cfg.stage:
        cfg.stage.train.progress_bar = False  # FAST
    validate(cfg)
    module = stage_module(cfg.stage.runner)
    return run_stage(module, cfg, create_context(cfg, str(run_dir), module.prepare(cfg)))


def dialogue(*turns, question=None, system=None):
    """A Dialogue from (user, assistant) pairs, then `question` as a last user message (a prompt)."""
    from llmx.data.dialogue import Dialogue

    head = ({"role": "system", "content": system},) if system else ()
    pairs = tuple(m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a}))
    tail = ({"role": "user", "content": question},) if question is not None else ()
    return Dialogue(head + pairs + tail)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list, run, key: str = "test-key") -> dict:
    """A server process (`python <argv> stage=serve ...`), once it answers /health."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, *argv, "stage=serve", f"stage.port={port}", f"stage.api_key={key}",
                             f"hydra.run.dir={run}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}: {proc.stdout.read()}")
        time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("the server did not answer /health")
    return {"base": base, "port": port, "proc": proc, "run": run}
