"""`hydra/launcher=submitit_slurm`: Slurm jobs sized by their own layout, requeued on time limit (paddle-free).

hydra-submitit-launcher submits every job of a sweep as one Slurm array with the same
resources, so a sweep over `parallel=single,dp2,tp2pp2` cannot give each job its ranks.
llmx's SlurmLauncher composes each job's config first and asks Slurm for what its layout
needs: world = dp*tp*pp*sharding tasks (the tasks are the ranks, see
llmx.launcher.adopt_slurm_world) and, on a CUDA build, as many GPUs, over several nodes
when a node has fewer GPUs than the world. Jobs asking the same are submitted together
as one array; job numbers, run dirs and `.submitit/` logs are the plugin's. Keys the
user sets (hydra.launcher.tasks_per_node / nodes / gpus_per_node) win for every job.

A job signalled before its time limit (or preempted) is requeued by submitit through the
plugin's `checkpoint()`: the same job number, hence the same run dir, where llmx resumes
from the latest complete checkpoint (conf/hydra/launcher/submitit_slurm.yaml allows a
few requeues: max_num_timeout).

Hydra builds launchers only from its plugin registry, and only under names in the
`hydra_plugins` package; conf/hydra/launcher/submitit_slurm.yaml therefore names PLUGIN_NAME
and brings in the callback `RegisterLauncher`, which Hydra instantiates before it builds the
launcher and which enters SlurmLauncher in the registry under that name. (The class itself
stays in llmx, so that submitit's jobs unpickle it wherever llmx is importable.)
"""
from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra.experimental.callback import Callback
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from llmx.errors import ConfigError
from llmx.layout import Layout

log = logging.getLogger(__name__)
PLUGIN_NAME = "hydra_plugins.llmx.SlurmLauncher"
# Keys sized by each job's layout unless given (conf/hydra/launcher/submitit_slurm.yaml: 0 or null).
SIZED = ("nodes", "tasks_per_node", "gpus_per_node")
# Hydra 1.3 warns, at every composition, that llmx's conf file of the plugin's name is merged into the
# plugin's schema; that is what llmx wants (the file only changes a few of the plugin's keys).
SCHEMA_NOTICE = r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema"


def quiet_schema_notice() -> None:
    warnings.filterwarnings("ignore", message=SCHEMA_NOTICE, category=UserWarning)


class RegisterLauncher(Callback):
    """A Hydra callback whose only work is done when Hydra builds it (see the module docstring)."""

    def __init__(self) -> None:
        quiet_schema_notice()  # for the compositions still to come in this process
        Plugins.instance().class_name_to_class[PLUGIN_NAME] = SlurmLauncher


def node_gpus(sinfo_gres: str) -> int | None:
    """The most GPUs one node offers, from `sinfo -o %G` lines ("gpu:8", "gpu:a100:4(S:0-1)",
    "(null)"); None when no line names any."""
    counts = [int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()\s]+)?:(\d+)", sinfo_gres)]
    return max(counts) if counts else None


def partition_node_gpus(partition: str | None) -> int | None:
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return node_gpus(out.stdout) if out.returncode == 0 else None


def job_resources(world: int, gpu: bool, given: dict[str, int | None], per_node_gpus: int | None,
                  what: str) -> dict[str, int | None]:
    """nodes, tasks_per_node and gpus_per_node of one job whose layout has `world` ranks.
    `given` holds the user's values (None: unset); `what` names the job in errors."""
    nodes, tasks, gpus = (given.get(k) for k in SIZED)
    if nodes is None:
        nodes = 1
        if gpu and per_node_gpus and world > per_node_gpus:
            nodes = math.ceil(world / per_node_gpus)
    if tasks is None:
        if world % nodes:
            raise ConfigError(f"hydra.launcher.nodes: {nodes} nodes cannot share the {world} ranks of {what} evenly")
        tasks = world // nodes
    if tasks * nodes not in (1, world):  # one task launches the ranks itself (llmx.launcher)
        raise ConfigError(f"hydra.launcher.tasks_per_node: {nodes} node(s) x {tasks} tasks but {what} needs {world} "
                          "processes (dp*tp*pp*sharding); leave tasks_per_node unset to size each job by its layout")
    if gpu and gpus is None:
        gpus = max(1, world // nodes)
    return {"nodes": nodes, "tasks_per_node": tasks, "gpus_per_node": gpus}


class SlurmLauncher(plugin.SlurmLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """A job on Slurm (every task runs this, and every start of a requeued job)."""
        quiet_schema_notice()
        drop_unfinished_result()
        return super().__call__(*args, **kwargs)

    def _job_resources(self, idx: int, overrides: list[str]) -> dict[str, int | None]:
        from llmx.devices import cuda_build

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        layout = Layout.of(cfg.parallel)
        world = layout.world
        given = {k: self.params.get(k) or None for k in ("nodes", "tasks_per_node")}  # 0: unset
        given["gpus_per_node"] = self.params.get("gpus_per_node")  # null: unset (0: no GPUs)
        gpu = cfg.device == "gpu" or (cfg.device == "auto" and cuda_build()) or bool(given["gpus_per_node"])
        per_node = partition_node_gpus(self.params.get("partition")) if gpu and given["nodes"] is None else None
        what = f"job #{idx} ({layout.describe()})"
        return job_resources(world, gpu, given, per_node, what)

    def _executor(self, resources: dict[str, int | None]) -> Any:
        """A submitit executor for the plugin's parameters with these resources (the plugin's own
        translation: executor-specific keys get the `slurm_` prefix)."""
        import submitit

        params = {**self.params, **resources}
        init = {"folder": params.pop("submitit_folder"), "slurm_max_num_timeout": params.pop("max_num_timeout")}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        # Every job composed first: a bad one stops the sweep before anything is queued.
        sized = [(idx, overrides, self._job_resources(idx, overrides)) for idx, overrides in jobs]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        groups: dict[tuple, list[tuple[int, list[str]]]] = {}
        for idx, overrides, res in sized:
            shape = f"{res['nodes']} node(s) x {res['tasks_per_node']} tasks" + (
                f", {res['gpus_per_node']} GPUs per node" if res["gpus_per_node"] else "")
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} ({shape})")
            groups.setdefault(tuple(res.items()), []).append((idx, overrides))
        submitted = {}
        for key, members in groups.items():
            args = [(overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                    for idx, overrides in members]
            handles = self._executor(dict(key)).map_array(self, *zip(*args))
            submitted.update({idx: job for (idx, _), job in zip(members, handles)})
        return [rank0_return(submitted[idx]) for idx, _ in jobs]


def drop_unfinished_result() -> None:
    """In a task of a submitit job: remove the result file an earlier attempt of this task began and never
    finished. submitit (1.5.4) writes a task's result to `<result>.save_tmp` and then renames it; when a node
    fails, a task on a surviving node can return (its peer vanished) and be killed by Slurm's requeue between the
    two. The requeued attempt then cannot write its result ("A temporary saved file already exists") and the
    sweep waits for it forever. Can go when submitit replaces a stale temporary file."""
    import submitit

    result = submitit.JobEnvironment().paths.result_pickle
    result.with_suffix(result.suffix + ".save_tmp").unlink(missing_ok=True)


def in_queue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.returncode != 0 or bool(out.stdout.strip())  # when squeue cannot tell, keep waiting


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job`'s Key=Value fields of a job ({} once Slurm has forgotten it)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout)) if out.returncode == 0 else {}


def failed_nodes(nodes: str) -> list[str]:
    """Those of `nodes` (a Slurm hostlist) that Slurm has set down, failing or draining, each with its reason."""
    out = subprocess.run(["sinfo", "-h", "-N", "-n", nodes, "-o", "%N|%T|%E"], capture_output=True, text=True)
    lost = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        name, state, reason = (line.split("|") + ["", ""])[:3]
        if re.match(r"(down|fail|drain)", state):
            lost[name] = f"{name} ({state.rstrip('*~#')}: {reason})" if reason and reason != "none" else name
    return sorted(lost.values())


class NodeFailureWatch:
    """Says, in one line, when Slurm requeues a job because a node it ran on failed. Slurm sets a node
    that stops answering DOWN after SlurmdTimeout, ends the job's steps on its other nodes and requeues
    the job, which starts again (resuming from its latest checkpoint) when enough nodes are up. The
    ranks of the attempt that ended may have left results (a rank that saw its peer vanish): removed,
    so that the new attempt's results are the ones waited for."""

    def __init__(self, job: Any) -> None:
        self.job, self.nodes, self.restarts = job, "", 0

    def check(self) -> None:
        fields = job_fields(self.job.job_id)
        if fields.get("JobState") == "RUNNING":
            self.nodes = fields.get("NodeList", self.nodes)
        restarts = int(fields.get("Restarts") or self.restarts)
        if restarts <= self.restarts:
            return
        self.restarts = restarts
        lost = failed_nodes(self.nodes) if self.nodes else []
        if not lost:  # a requeue for a time limit or preemption: submitit's own business
            return
        for task in range(self.job.num_tasks):
            self.job.task(task).paths.result_pickle.unlink(missing_ok=True)
        print(f"slurm job {self.job.job_id}: node {', '.join(lost)} failed; Slurm requeued the job, which "
              "resumes from its latest checkpoint once enough nodes are up", flush=True)


def rank0_return(job: Any) -> JobReturn:
    """The job's outcome, as its rank 0 (which writes the run's files) returned it, once every task is
    done. A task can end without a result: the ranks of a job that has used up its requeues go on after
    rank 0 has given up, until Slurm kills them. submitit then waits forever where Slurm keeps no
    accounting (it cannot see the job end) and raises where it does; so once rank 0 has returned, a job
    gone from the queue counts as done. A node failure meanwhile is said on the console (NodeFailureWatch)."""
    rank0, watch = job.task(0), NodeFailureWatch(job)
    while not job.done():
        watch.check()
        if rank0.done() and not in_queue(job.job_id):
            break
        time.sleep(2)
    return rank0.result()
