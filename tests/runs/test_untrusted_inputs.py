"""Untrusted inputs: a model or run directory whose pickles name code is refused in one line before any of it
runs (llmx.safe_pickle behind paddle.load); a legitimate PaddleNLP `.pdparams` loads, restricted or trusted."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess

from helpers import launch, read_json

from llmx.experiment import COMPLETE_MARKER, seal_file


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.path],))


def _poison(path, marker) -> None:
    """Replace a pickle by one that creates `marker` when loaded (among real-looking data)."""
    path.write_bytes(pickle.dumps({"last_epoch": 1, "payload": _Touch(marker)}, protocol=4))


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"src": "Hello"}\n{"src": "What is 2+2?"}\n')
    return path


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_a_model_dir_whose_weights_run_code_is_refused(tiny_model_dir, tmp_path):
    model, marker = tmp_path / "shared_model", tmp_path / "created"
    shutil.copytree(tiny_model_dir, model)
    _poison(model / "model_state.pdparams", marker)
    proc = launch("stage=infer", f"stage.input={_prompts(tmp_path)}", f"model.name_or_path={model}",
                  f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode != 0
    assert _last_line(proc) == (f"llmx: error: {model / 'model_state.pdparams'}: refusing to unpickle subprocess.call "
                                "(pickled code, not data); load only files you trust, and then with "
                                "model.trust_pickle=true")
    assert not marker.exists()


def test_resuming_a_run_whose_rng_state_runs_code_is_refused(sft_run, tmp_path):
    run, marker = tmp_path / "shared_run", tmp_path / "created"
    shutil.copytree(sft_run, run)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    _poison(latest / "rng_state.pth", marker)
    # as a sharer would: the checkpoint's record of its files (sizes, CRC-32) matches the poisoned file, so resume
    # does not set the checkpoint aside as damaged but loads it
    record = json.loads((latest / COMPLETE_MARKER).read_text())
    record["files"]["rng_state.pth"] = seal_file(latest / "rng_state.pth")
    (latest / COMPLETE_MARKER).write_text(json.dumps(record))
    steps = read_json(run / "summary.json")["steps"]
    proc = launch(f"hydra.run.dir={run}", f"stage.train.max_steps={steps + 1}", "stage.train.progress_bar=false",
                  check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "refusing to unpickle subprocess.call" in _last_line(proc) and str(latest / "rng_state.pth") in _last_line(proc)
    assert not marker.exists()


def test_a_legitimate_pdparams_loads_restricted_and_trusted(tiny_model_dir, tmp_path):
    common = ("stage=infer", f"stage.input={_prompts(tmp_path)}", f"model.name_or_path={tiny_model_dir}",
              "stage.max_new_tokens=4")
    restricted = launch(*common, f"hydra.run.dir={tmp_path / 'restricted'}")
    trusted = launch(*common, "model.trust_pickle=true", f"hydra.run.dir={tmp_path / 'trusted'}")
    assert "trust_pickle=true: pickles" in (tmp_path / "trusted" / "llmx.log").read_text()
    assert "trust_pickle" not in (tmp_path / "restricted" / "llmx.log").read_text()
    outputs = [(tmp_path / d / "output.jsonl").read_text() for d in ("restricted", "trusted")]
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 2, (restricted.stdout, trusted.stdout)
