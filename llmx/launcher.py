"""Local multi-process launch (paddle-free): `python launch.py parallel=tp2` from a plain shell.

A layout needing N > 1 processes, started outside any launcher, re-runs its own job
under `python -m paddle.distributed.launch --nproc_per_node N`: on GPUs when this
paddle build has CUDA and GPUs are visible, else as N CPU processes over gloo. Every
rank gets the job's overrides plus `hydra.run.dir=<this job's run dir>`, so all of
them share the one Hydra run directory (rank 0 writes the experiment files; Paddle's
per-rank logs go to `<run dir>/launch_logs/workerlog.<rank>`). This process only waits
and reports: it never imports paddle. Under a launcher (PADDLE_TRAINERS_NUM set by
paddle.distributed.launch) a process just joins.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

from omegaconf import DictConfig

from llmx.schema import CONF_DIR, launched_processes
from llmx.errors import ConfigError, UserError
from llmx.devices import cuda_build, visible_gpus
from llmx.layout import Layout

log = logging.getLogger("llmx")
LAUNCH_LOGS = "launch_logs"
LAUNCHER_LOG = "launcher.log"  # paddle.distributed.launch's own output
LAUNCH_PY = CONF_DIR.parent / "launch.py"
# Hydra overrides a single-run child must not inherit: the sweep machinery and the run dir we set.
NOT_INHERITED = ("hydra.run.dir", "hydra.sweep.", "hydra/launcher", "hydra.launcher.", "hydra/sweeper",
                  "hydra.sweeper.", "hydra.mode", "hydra.job.num", "hydra.job.id")


class LaunchError(UserError):
    """Some rank of a self-launched job failed; its log tail was already printed by the launcher."""

    kind = "launch error"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def under_launcher() -> bool:
    return launched_processes() is not None


def needs_launch(cfg: DictConfig) -> bool:
    return Layout.of(cfg.parallel).world > 1 and not under_launcher()


def child_command(hydra_cfg, run_dir: Path) -> List[str]:
    """The job as one single-run command line: its own overrides, our run dir."""
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(NOT_INHERITED)]
    args = list(hydra_cfg.overrides.task) + hydra_overrides + [f"hydra.run.dir={run_dir}"]
    if hydra_cfg.job.config_name and hydra_cfg.job.config_name != "config":
        args = ["--config-name", hydra_cfg.job.config_name] + args
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            args = ["--config-dir", source.path] + args
    return [entry_script()] + args


def entry_script() -> str:
    """The script that composes a job: the one this process was started with, except inside a
    submitit job, whose script is submitit's `_submit.py` (started as `python -m`): there, llmx's
    launch.py, which composes every llmx job a submitit launcher runs."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("submitit."):
        return str(LAUNCH_PY)
    return os.path.abspath(sys.argv[0])


def launch(cfg: DictConfig, hydra_cfg, run_dir: Path) -> None:
    """Start the layout's processes, wait, and raise LaunchError if any rank failed."""
    layout = Layout.of(cfg.parallel)
    n = layout.world
    gpus = [] if cfg.device == "cpu" else visible_gpus()
    if cfg.device == "gpu" and not gpus:
        raise ConfigError("device='gpu': no CUDA device visible to this paddle build (allowed here: auto, cpu)")
    if gpus and n > len(gpus):
        raise ConfigError(f"parallel: dp*tp*pp*sharding = {n} but {len(gpus)} GPUs visible ({layout.describe()})")
    env = dict(os.environ)
    launcher = [sys.executable, "-m", "paddle.distributed.launch", "--log_level", "WARNING",
                "--log_dir", str(run_dir / LAUNCH_LOGS), "--max_restart", "0"]
    if gpus:
        launcher += ["--devices", ",".join(gpus[:n])]
    else:
        launcher += ["--nproc_per_node", str(n)]
        env["PADDLE_DISTRI_BACKEND"] = "gloo"
        if not cuda_build():  # paddle's launcher takes any CUDA_VISIBLE_DEVICES, even "" (as submitit's
            env.pop("CUDA_VISIBLE_DEVICES", None)  # local executor sets it), for a list of GPUs
        elif cfg.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # a GPU build asked to run on CPU must not grab GPUs
    cmd = launcher + child_command(hydra_cfg, run_dir)
    logs = run_dir / LAUNCH_LOGS
    log.info("starting %d %s processes (%s); progress: tail -f %s", n, "GPU" if gpus else "CPU (gloo)",
             layout.describe(), logs / "workerlog.0")
    logging.getLogger(__name__).debug("command: %s", " ".join(cmd))
    for handler in logging.getLogger().handlers:  # rank 0 appends to llmx.log from here on
        handler.flush()
    logs.mkdir(parents=True, exist_ok=True)
    # Paddle's launcher reports a failure by dumping every rank's log on the console; it goes to its
    # own file, and the one line below names the rank that failed and why.
    with open(logs / LAUNCHER_LOG, "w") as out:
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise LaunchError(failed_rank_line(logs, n), rc)


def _last_error(text: str) -> str | None:
    """The exception (or llmx one-line error) a rank's log ends with, if any."""
    found = None
    for line in text.splitlines():
        if line.startswith("llmx: ") or re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b(: |$)", line):
            found = line.strip()
    return found


def failed_rank_line(logs: Path, world: int) -> str:
    """`rank R failed: <its error> (...)`: the rank Paddle's launcher saw fail first, else the first
    rank whose log ends in an error."""
    launcher_log = (logs / LAUNCHER_LOG).read_text(errors="replace") if (logs / LAUNCHER_LOG).exists() else ""
    first = re.search(r"Container rank (\d+) status failed", launcher_log)
    ranks = ([int(first.group(1))] if first else []) + list(range(world))
    for rank in ranks:
        path = logs / f"workerlog.{rank}"
        error = _last_error(path.read_text(errors="replace")) if path.exists() else None
        if error:
            return f"rank {rank} of {world} failed: {error} (its log: {path})"
    return f"{world}-process run failed; per-rank logs: {logs}/workerlog.* and {logs / LAUNCHER_LOG}"


def adopt_slurm_world() -> bool:
    """Inside a Slurm job whose tasks are the ranks (hydra-submitit-launcher with
    tasks_per_node/nodes > 1), give every task the environment paddle.distributed.launch
    would have given it, so the tasks form one fleet group: rank = SLURM_PROCID, world =
    SLURM_NTASKS, the master is the job's first node. Ports come from the job id (every task
    must agree on them without talking first), so concurrent jobs on a node do not collide.
    Returns whether it did so; a no-op outside Slurm, for one task, or under a launcher."""
    tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if tasks <= 1 or "SLURM_PROCID" not in os.environ or under_launcher():
        return False
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or socket.gethostname()
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    hosts = out.stdout.split() if out.returncode == 0 and out.stdout.strip() else [nodelist]
    per_node = tasks // len(hosts)
    base = 20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000
    endpoints = [f"{socket.gethostbyname(h)}:{base + i}" for h in hosts for i in range(per_node)]
    gpus = visible_gpus()
    if len(hosts) > 1 and not gpus:
        check_gloo_address(len(hosts))
    rank, local = int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_LOCALID", "0"))
    os.environ.update({
        "PADDLE_TRAINER_ID": str(rank), "PADDLE_GLOBAL_RANK": str(rank), "PADDLE_TRAINERS_NUM": str(tasks),
        "PADDLE_GLOBAL_SIZE": str(tasks), "PADDLE_LOCAL_RANK": str(local), "PADDLE_RANK_IN_NODE": str(local),
        "PADDLE_LOCAL_SIZE": str(per_node), "PADDLE_NNODES": str(len(hosts)),
        "PADDLE_TRAINER_ENDPOINTS": ",".join(endpoints), "PADDLE_CURRENT_ENDPOINT": endpoints[rank],
        "PADDLE_MASTER": endpoints[0],
    })
    if gpus:
        os.environ.setdefault("FLAGS_selected_gpus", str(local))
    else:
        os.environ["PADDLE_DISTRI_BACKEND"] = "gloo"
    return True


def check_gloo_address(nodes: int) -> None:
    """gloo (the CPU collectives) binds every rank to the address its host's name resolves to: Paddle's
    build offers no setting for the interface. A name that resolves to loopback only (Debian's default
    /etc/hosts maps it to 127.0.1.1) gives the other nodes an address they cannot reach: rank 0 fails
    with `connect [127.0.0.1]:<port>: Connection refused` and the others hang. Refused here instead."""
    name = socket.gethostname()
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)})
    except socket.gaierror:
        addresses = []
    if not addresses or all(ipaddress.ip_address(a).is_loopback for a in addresses):
        node = os.environ.get("SLURMD_NODENAME", name)
        raise UserError(f"a job over {nodes} nodes runs its CPU ranks over gloo, which binds to the address of the "
                        f"host's name, but on node {node} the name {name!r} resolves to "
                        f"{', '.join(addresses) or 'nothing'}, which the other nodes cannot reach: map it to the "
                        "node's cluster address (in /etc/hosts or DNS)")


def join_launched_job() -> None:
    """In a launched rank other than 0: leave llmx.log to rank 0 (our output is in launch_logs)."""
    if int(os.environ.get("PADDLE_TRAINER_ID", "0")) != 0:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()
