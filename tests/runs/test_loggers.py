"""The `logger` group: every tracker at once on an SFT run and a GRPO run, read back with each tracker's own
package, holds metrics.jsonl's values at their steps (training steps and held-out metrics), the config as
parameters and the summary; a failed run's trackers are closed as failed; a sweep's jobs are one MLflow
experiment."""
from __future__ import annotations

import glob
import json
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import FAST, compose, launch, read_json, read_jsonl, run_in_process

ALL = "logger=[visualdl,tensorboard,mlflow,wandb,swanlab]"
PACKAGES = ("visualdl", "tensorboardX", "tensorboard", "mlflow", "sqlalchemy", "wandb", "swanlab")


@pytest.fixture(scope="module", autouse=True)
def trackers_installed():
    for name in PACKAGES:
        pytest.importorskip(name, reason=f'{name} is missing: pip install -e ".[test]"')


def expected(run: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {key: {step: value}}: what every tracker must hold."""
    out: dict = defaultdict(dict)
    for record in read_jsonl(run / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert record["step"] not in out[key], f"{key} logged twice at step {record['step']}"
                out[key][record["step"]] = float(value)
    return dict(out)


def visualdl_curves(run: Path) -> tuple[dict, set]:
    from visualdl import LogReader

    (path,) = glob.glob(str(run / "visualdl" / "vdlrecords.*"))
    reader = LogReader(file_path=path)
    tags = reader.get_tags()
    return {tag: {r.id: r.value for r in reader.get_data("scalar", tag)} for tag in tags["scalar"]}, set(tags)


def tensorboard_curves(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def mlflow_run(store: Path, experiment: str = "llmx"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, runs


def mlflow_curves(client, run) -> dict:
    return {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in run.data.metrics}


def wandb_records(run: Path) -> tuple[dict, dict, dict]:
    """The offline run file: its history rows (per step), config and final summary, decoded with wandb's own
    record protocol; the file's framing (a LevelDB log) is read by SwanLab's importer of wandb runs (wandb 0.31
    reads it only in its Go core)."""
    from swanlab.converter.wb.wbdatastore import WBDataStoreReader
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    curves, config, summary = defaultdict(dict), {}, {}
    with WBDataStoreReader() as reader:
        reader.open(path)
        while (data := reader.scan()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                for key, value in row.items():
                    if not key.startswith("_"):
                        curves[key][row["_step"]] = value
            elif kind == "run":
                config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "summary":
                summary.update({u.key: json.loads(u.value_json) for u in record.summary.update if u.key})
    return dict(curves), config, summary


def swanlab_records(run: Path) -> tuple[dict, dict]:
    """SwanLab's run file read with its own reader and record protocol, and the config file it saved."""
    import yaml
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (path,) = glob.glob(str(run / "swanlog" / "run-*" / "run-*.swanlab"))
    reader, curves, config = DataStoreReader(), defaultdict(dict), {}
    reader.open(path)
    while (data := reader.scan()) is not None:
        record = Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "scalar":
            curves[record.scalar.key][record.scalar.step] = record.scalar.value.number
        elif record.WhichOneof("record_type") == "save" and record.save.name == "config":
            config = yaml.safe_load(Path(record.save.source_path).read_text())
    return dict(curves), config


def check_every_tracker(run: Path, param: str, value) -> None:
    """Each tracker's own files hold metrics.jsonl's curves, the config parameter `param` = `value` and the summary."""
    want, summary = expected(run), read_json(run / "summary.json")
    numbers = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    last = max(step for curve in want.values() for step in curve)
    summarised = {f"summary/{k}": {last: v} for k, v in numbers.items()}

    def same(found: dict, rel: float = 0.0) -> None:
        for key, curve in {**want, **summarised}.items():
            assert found.get(key) == pytest.approx(curve, rel=rel, abs=1e-12), key

    curves, components = visualdl_curves(run)
    assert components == {"scalar", "meta_data"}  # VisualDL opens on the scalars: no text, no hparams tab
    same(curves, rel=1e-6)  # (float32)
    same(tensorboard_curves(run), rel=1e-6)

    client, (mlrun,) = mlflow_run(run / "mlflow.db")
    same(mlflow_curves(client, mlrun))
    assert mlrun.data.params[param] == str(value) and mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == str(run)  # (outside the working directory: the absolute path)

    curves, config, wandb_summary = wandb_records(run)
    assert curves.keys() == want.keys()  # (held-out records join their step's history row)
    for key, curve in want.items():
        assert curves[key] == pytest.approx(curve), key
    assert config[param] == value
    assert {k: wandb_summary[k] for k in numbers} == pytest.approx(numbers)

    curves, config = swanlab_records(run)
    same(curves)
    assert config[param]["value"] == value


def test_sft_run_reaches_every_tracker_and_the_hints_open_each(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from llmx.tracking import hints

    run = tmp_path / "sft"
    run_in_process(run, ALL, "stage.train.max_steps=3", "stage.train.logging_steps=1", "stage.train.save_steps=100")
    want = expected(run)
    assert set(want["eval_loss"]) == {0, 3} and set(want["loss"]) == {1, 2, 3}  # held-out metrics at their steps
    check_every_tracker(run, "stage.train.max_steps", 3)

    (run / ".hydra").mkdir()  # what launch.py's Hydra writes (run_in_process does not)
    OmegaConf.save(compose(ALL), run / ".hydra" / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert hints(run) == ["curves:  visualdl --logdir sft", "curves:  tensorboard --logdir sft",
                          f"mlflow:  mlflow ui --backend-store-uri sqlite:///{run / 'mlflow.db'}",
                          "wandb:   wandb sync sft/wandb/offline-run-*", "swanlab: swanlab sync sft/swanlog/run-*"]


def test_grpo_run_reaches_every_tracker(tiny_model_dir, tmp_path):
    run = tmp_path / "grpo"
    run_in_process(run, ALL, "stage=grpo", f"model.name_or_path={tiny_model_dir}", "stage.train.max_steps=2",
                   "stage.data.eval_prompts=8", "stage.rollout.prompts_per_step=4", "stage.train.batch_size=8",
                   "stage.rollout.max_new_tokens=4")
    want = expected(run)
    assert set(want["reward_mean"]) == {1, 2} and set(want["eval_reward_before"]) == {0}
    assert set(want["eval_reward_after"]) == {2}
    check_every_tracker(run, "stage.rollout.max_new_tokens", 4)


def test_a_sweep_is_one_mlflow_experiment_and_the_hints_say_where(tmp_path, monkeypatch):
    from llmx.tracking import hints

    sweep = tmp_path / "sweep"
    launch("-m", f"hydra.sweep.dir={sweep}", "logger=[visualdl,mlflow]", *FAST, "stage.train.max_steps=2",
           "stage.train.logging_steps=1", "stage.eval.enabled=false", "stage.train.save_steps=100", "stage.train.lr=1e-3,2e-3", cwd=tmp_path)
    client, runs = mlflow_run(sweep / "mlflow.db", experiment="sweep")
    assert sorted(r.info.run_name for r in runs) == ["sweep/0", "sweep/1"]
    assert sorted(r.data.params["stage.train.lr"] for r in runs) == ["0.001", "0.002"]
    for r in runs:
        job = sweep / r.info.run_name.split("/")[1]
        assert mlflow_curves(client, r)["loss"] == pytest.approx(expected(job)["loss"])
    monkeypatch.chdir(tmp_path)
    assert hints(sweep / "0") == ["curves:  visualdl --logdir sweep",
                                  f"mlflow:  mlflow ui --backend-store-uri sqlite:///{sweep / 'mlflow.db'}"]


def test_a_failed_run_closes_its_trackers_as_failed_and_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from llmx.experiment import Experiment

    run = Experiment(tmp_path / "run").create()
    config = {"stage": {"train": {"lr": 0.01}}, "seed": 1}
    run.open_trackers({"mlflow": {}}, config)
    run.log_metrics({"step": 1, "loss": 2.5, "note": "text is no curve"})
    run.close_trackers(None)  # the run failed
    client = MlflowClient(tracking_uri=f"sqlite:///{run.dir / 'mlflow.db'}")
    (first,) = client.search_runs([client.get_experiment_by_name("llmx").experiment_id])
    assert first.info.status == "FAILED" and first.data.params == {"stage.train.lr": "0.01", "seed": "1"}

    run.open_trackers({"mlflow": {}}, config)  # relaunched into the same run dir: resumes
    run.log_metrics({"step": 2, "loss": 2.0})
    run.close_trackers({"final_loss": 2.0, "model_dir": "m"})
    (again,) = client.search_runs([first.info.experiment_id])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(again.info.run_id, "loss")] == [(1, 2.5), (2, 2.0)]
    assert again.data.metrics["summary/final_loss"] == 2.0
