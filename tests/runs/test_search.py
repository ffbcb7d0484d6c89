"""`hydra/sweeper=llmx_search`: a real search of tiny LoRA runs, read back from its SQLite study with Optuna.

TPE finds an eval loss at or below the median of a grid over the same range; the same command launched
again continues the study (also after the sweep was killed mid-trial); a pruned trial is recorded as
pruned; on the real Slurm of .ci/run, trials of different layouts run side by side."""
from __future__ import annotations

import csv
import re
import statistics
import subprocess
import sys
import time

import optuna
from helpers import FAST, REPO, launch, read_json, read_jsonl
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_slurm import needs_slurm

# Four steps, evaluated after two (what a pruner judges) and at the end; one generated sample.
RUN = [*FAST, "stage=lora", "stage.train.max_steps=4", "stage.train.eval_steps=2", "stage.train.logging_steps=2",
       "stage.train.save_steps=100", "stage.eval.num_samples=1", "stage.eval.max_new_tokens=2"]
LR = "stage.train.lr=interval(1e-4,1e-1,log)"
C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def search(sweep, *overrides, check=True):
    return launch("-m", "hydra/sweeper=llmx_search", f"hydra.sweep.dir={sweep}", *RUN, *overrides, check=check)


def study(sweep) -> optuna.Study:
    return optuna.load_study(study_name="llmx_search", storage=f"sqlite:///{sweep / 'study.db'}")


def test_tpe_finds_at_least_the_median_of_a_grid(tmp_path):
    sweep, grid = tmp_path / "search", tmp_path / "grid"
    out = search(sweep, LR, "hydra.sweeper.n_trials=8", "hydra.sweeper.objective=eval_loss",
                 "hydra.sweeper.direction=minimize", "+hydra.sweeper.sampler_args.n_startup_trials=3")
    trials = study(sweep).trials
    assert [t.number for t in trials] == list(range(8)) and {t.state for t in trials} <= {C, P}
    for t in trials:  # each trial's run: its own dir, the sampled lr, the intermediate eval reported at step 2
        assert list(t.intermediate_values) == [2]
        summary = read_json(sweep / str(t.number) / "summary.json")
        assert t.state != C or summary["eval_loss"] == t.value
    best = study(sweep).best_trial

    launch("-m", f"hydra.sweep.dir={grid}", *RUN, "stage.train.lr=1e-4,3.162e-3,1e-1")
    grid_losses = [read_json(grid / str(i) / "summary.json")["eval_loss"] for i in range(3)]
    assert best.value <= statistics.median(grid_losses), (best.value, grid_losses)

    # sweep.md: best first, every trial with its state and lr, then the best run's command line.
    md = (sweep / "sweep.md").read_text()
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [int(r["trial"]) for r in rows][0] == best.number and len(rows) == 8
    assert float(rows[0]["stage.train.lr"]) == best.params["stage.train.lr"] and rows[0]["state"] == "COMPLETE"
    complete = [float(r["eval_loss"]) for r in rows if r["state"] == "COMPLETE"]
    assert complete == sorted(complete)
    job_overrides = OmegaConf.load(sweep / str(best.number) / ".hydra" / "overrides.yaml")
    assert md.rstrip().endswith("python launch.py " + " ".join(job_overrides))
    assert "search: best trial" in out.stdout + out.stderr


def test_relaunch_continues_the_study_after_a_kill(tmp_path):
    sweep = tmp_path / "search"
    command = [LR, "hydra.sweeper.pruner=none"]
    search(sweep, *command, "hydra.sweeper.n_trials=3")
    first = study(sweep).trials
    assert [t.state for t in first] == [C, C, C]

    # The same command asking for more trials, killed in the middle of its first: that trial is number 3.
    argv = [sys.executable, str(REPO / "launch.py"), "-m", "hydra/sweeper=llmx_search", f"hydra.sweep.dir={sweep}",
            *RUN, *command, "hydra.sweeper.n_trials=5"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (sweep / "3" / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert [t.state for t in study(sweep).trials] == [C, C, C, TrialState.RUNNING]

    search(sweep, *command, "hydra.sweeper.n_trials=5")
    trials = study(sweep).trials
    assert [t.state for t in trials] == [C, C, C, F, C]
    assert [(t.params, t.value, t.datetime_complete) for t in trials[:3]] == \
        [(t.params, t.value, t.datetime_complete) for t in first], "the finished trials are kept as they were"
    assert trials[3].user_attrs["error"].startswith("interrupted") and trials[4].params == trials[3].params
    assert read_json(sweep / "4" / "summary.json")["eval_loss"] == trials[4].value
    assert "| FAIL |" in (sweep / "sweep.md").read_text()


def test_pruned_and_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    """A threshold below any loss prunes every run at its first evaluation during training (step 2 of 4);
    a run that fails (lr=-1) is a failed trial; the search goes on, and fails as none completed."""
    sweep = tmp_path / "search"
    out = search(sweep, "stage.train.lr=choice(-1,1e-2)", "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=threshold",
                 "+hydra.sweeper.pruner_args.upper=1.0", check=False)
    trials = study(sweep).trials
    assert len(trials) == 3 and {t.state for t in trials} == {P, F}, "both choices were tried"
    for t in trials:
        status = read_json(sweep / str(t.number) / "status.json")
        if t.params["stage.train.lr"] == "-1":
            assert t.state == F and t.user_attrs["error"] == "ConfigError: stage.train.lr=-1.0: must be > 0"
            assert status["status"] == "failed"
            continue
        assert t.state == P and list(t.intermediate_values) == [2] and status["status"] == "ok"
        summary = read_json(sweep / str(t.number) / "summary.json")
        assert summary["pruned_at_step"] == 2 and summary["steps"] == 2
        assert summary["eval_loss"] == t.intermediate_values[2]
        assert [r["step"] for r in read_jsonl(sweep / str(t.number) / "metrics.jsonl") if "eval_loss" in r] == [0, 2]
    md = (sweep / "sweep.md").read_text()
    assert md.index("| PRUNED |") < md.index("| FAIL |") and "must be > 0" in md
    counts = f"{sum(t.state == P for t in trials)} pruned, {sum(t.state == F for t in trials)} failed"
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(
        f"llmx: error: search: no trial completed ({counts}; see {sweep / 'sweep.md'}); first: trial ")


@needs_slurm
def test_search_over_layouts_on_slurm(tmp_path):
    """Two trials at a time on Slurm, each sized by its layout (a dp2 trial runs as 2 Slurm tasks)."""
    sweep = tmp_path / "search"
    search(sweep, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10", "parallel=choice(single,dp2)",
           "stage.train.lr=interval(1e-3,1e-1,log)", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    trials = study(sweep).trials
    assert [t.state for t in trials] == [C] * 4 and all(list(t.intermediate_values) == [2] for t in trials)
    for t in trials:
        assert read_json(sweep / str(t.number) / "summary.json")["eval_loss"] == t.value
    assert {t.params["parallel"] for t in trials} == {"single", "dp2"}
    asked = sorted(int(re.search(r"--ntasks-per-node=(\d+)", p.read_text()).group(1))
                   for p in (sweep / ".submitit").glob("*/*_submission.sh"))
    assert asked == sorted(2 if t.params["parallel"] == "dp2" else 1 for t in trials), "one Slurm task per rank"
