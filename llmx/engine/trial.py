"""Evaluations during training (`stage.train.eval_steps`), and a search trial's pruning from them.

`fit` adds `PeriodicEvaluation` to the Trainer when it evaluates: every `eval_steps` steps (not at
the last, which fit evaluates itself) the Trainer evaluates, the held-out loss goes to metrics.jsonl, and
in a trial of `hydra/sweeper=llmx_search` it is reported to the trial in the Optuna study, which may prune
it: training stops there and the summary says `pruned_at_step`. The sweeper tells the job where its trial
is through the environment (llmx.search: LLMX_SEARCH_STORAGE, LLMX_SEARCH_STUDY, LLMX_SEARCH_TRIAL).
Rank 0 alone reports and asks; the other ranks take its answer, so that every rank stops at the same step.
"""
from __future__ import annotations

import os
from typing import Optional

from paddlenlp.trainer import TrainerCallback

from llmx.experiment import Experiment

ENV_STORAGE, ENV_STUDY, ENV_TRIAL = "LLMX_SEARCH_STORAGE", "LLMX_SEARCH_STUDY", "LLMX_SEARCH_TRIAL"


class SearchTrial:
    """The Optuna trial this run is (opened on rank 0 only)."""

    def __init__(self, storage: str, study: str, number: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.load_study(study_name=study, storage=storage)
        pruner = self.study.user_attrs.get("pruner")  # the search's pruner (llmx.search.open_study)
        if pruner:
            self.study.pruner = getattr(optuna.pruners, pruner["class"])(**pruner["args"])
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.objective = self.study.user_attrs.get("objective", "eval_loss")

    @classmethod
    def from_environment(cls) -> Optional["SearchTrial"]:
        if ENV_TRIAL not in os.environ or int(os.environ.get("PADDLE_TRAINER_ID", "0")) != 0:
            return None
        return cls(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL]))

    def should_prune(self, step: int, metrics: dict) -> bool:
        value = metrics.get(self.objective)
        if value is None:  # an objective measured only at the end (e.g. final_loss): nothing to prune from
            return False
        self.trial.report(float(value), step)
        return self.trial.should_prune()


def searching() -> bool:
    return ENV_TRIAL in os.environ


def _agreed(decision: bool) -> bool:
    """Rank 0's decision on every rank."""
    import paddle
    import paddle.distributed as dist

    if dist.get_world_size() <= 1:
        return decision
    flag = paddle.to_tensor([int(decision)], dtype="int64")
    dist.broadcast(flag, src=0)
    return bool(flag.item())


class PeriodicEvaluation(TrainerCallback):
    def __init__(self, eval_steps: int, exp: Experiment, trial: Optional[SearchTrial], prefix: str = "eval") -> None:
        self.eval_steps, self.exp, self.trial, self.prefix = eval_steps, exp, trial, prefix
        self.pruned_at: Optional[int] = None
        self.last: dict = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.eval_steps > 0 and state.global_step % self.eval_steps == 0 and state.global_step < state.max_steps:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or state.global_step == 0 or state.global_step >= state.max_steps or self.pruned_at:
            return  # fit's own evaluations, before and after training (or after a pruning)
        key = f"{self.prefix}_loss"
        if key in metrics:
            self.last = {key: metrics[key]}
            self.exp.log_metrics({"step": state.global_step, **self.last})
        if not searching():
            return
        prune = self.trial.should_prune(state.global_step, metrics) if self.trial is not None else False
        if _agreed(prune):
            self.pruned_at = state.global_step
            control.should_training_stop = True

    def summary(self) -> dict:
        return {"pruned_at_step": self.pruned_at, **self.last} if self.pruned_at is not None else {}
