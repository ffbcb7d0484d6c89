"""Jobs over two Slurm nodes: partition `two` of `.ci/slurm-up --nodes 2`, whose nodes llmx-n1 and llmx-n2
are slurmds in network namespaces of this machine (.ci/slurm-node), so the ranks on either node talk over
gloo across a bridge as on two hosts. A layout split over the nodes equals one process; a node that dies
mid-run ends the job, and the requeued job resumes from its latest checkpoint once the node is back."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from helpers import FAST, REPO, launch, read_json, train_losses

NODES = ("llmx-n1", "llmx-n2")


def _two_nodes_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-p", "two", "-o", "%N %T"], capture_output=True, text=True)
    except OSError:
        return False
    up = {line.split()[0] for line in out.stdout.splitlines()
          if re.match(r"\S+ (idle|mixed|allocated|completing)$", line)}
    return out.returncode == 0 and up == set(NODES)


needs_two_nodes = pytest.mark.skipif(not _two_nodes_up(), reason="no two-node Slurm partition here: run "
                                     ".ci/slurm-up --nodes 2 (needs root: network namespaces, a bridge)")
ON_TWO_NODES = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=two", "hydra.launcher.nodes=2",
                "hydra.launcher.timeout_min=10"]
# The weights move (lr 5e-2, no warmup): every step's loss depends on the updates before it.
# llmx's kernels run in one tensor/pipeline rank only (llmx.engine.model): every side runs Paddle's composed ops,
# so the comparison is of the layouts alone (tests/runs/test_ops.py compares the kernels with the composed ops).
RUN = [*FAST, "model.fused_ops=off", "stage.train.max_steps=3", "stage.train.logging_steps=1", "stage.eval.enabled=false",
       "stage.train.save_steps=100", "stage.train.batch_size=4", "stage.train.grad_accum=2",
       "stage.train.lr=5e-2", "stage.train.warmup_steps=0"]


def _rank_hosts(job_logs) -> dict[int, str]:
    """global rank -> the node its task ran on, from submitit's task logs."""
    found = {}
    for log in job_logs.glob("*_log.out"):
        for host, rank in re.findall(r"hostname=(\S+?),.*global_rank=(\d+)\(", log.read_text()):
            found[int(rank)] = host
    return found


@needs_two_nodes
def test_tp2_and_dp2_tp2_over_two_nodes_equal_one_process(tmp_path):
    """tp2 as one rank per node, dp2 x tp2 as two per node (each tensor-parallel pair on one node, the
    data-parallel replicas across the nodes): the same losses as one process, step by step."""
    reference = tmp_path / "single"
    one = subprocess.Popen([sys.executable, str(REPO / "launch.py"), f"hydra.run.dir={reference}", *RUN],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "sweep"
    launch("-m", *ON_TWO_NODES, f"hydra.sweep.dir={sweep}", *RUN, "parallel=tp2", "parallel.dp=1,2")
    assert one.wait(timeout=300) == 0, one.stderr.read()[-3000:]
    want = train_losses(reference)
    assert [s for s, _ in want] == [1, 2, 3]
    asked = sorted(re.search(r"--nodes=(\d+)\n(?s:.*)--ntasks-per-node=(\d+)", p.read_text()).groups()
                   for p in (sweep / ".submitit").glob("*/*_submission.sh"))
    assert asked == [("2", "1"), ("2", "2")], "2 nodes x 1 task for tp2, 2 x 2 for dp2 x tp2"
    for job, world in (("0", 2), ("1", 4)):
        run = sweep / job
        assert read_json(run / "provenance.json")["world_size"] == world
        got = train_losses(run)
        assert [s for s, _ in got] == [1, 2, 3]
        assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5), job
        counters = [read_json(run / f"cpu_parallel_counters.rank{r}.json") for r in range(world)]
        assert all(c["mp.allreduce"] > 0 for c in counters), "tensor-parallel all-reduces on every rank"
    hosts = {int(d.name): _rank_hosts(d) for d in (sweep / ".submitit").iterdir() if d.is_dir()}
    assert sorted(hosts.values(), key=len) == [{0: "llmx-n1", 1: "llmx-n2"},
                                               {0: "llmx-n1", 1: "llmx-n1", 2: "llmx-n2", 3: "llmx-n2"}], hosts


STEPS = 60
LONG = [*FAST, f"stage.train.max_steps={STEPS}", "stage.train.save_steps=10", "stage.train.logging_steps=10",
        "stage.train.batch_size=4", "stage.train.grad_accum=1", "stage.eval.enabled=false"]


def _node(action: str, node: str) -> None:
    subprocess.run(["bash", str(REPO / ".ci" / "slurm-node"), action, node], check=True, timeout=60)


@needs_two_nodes
def test_a_node_that_dies_ends_the_job_which_resumes_once_the_node_is_back(tmp_path):
    """llmx-n2 (rank 1 of a tp2 job; rank 0 and the batch script are on llmx-n1) dies once the job has a
    checkpoint: its slurmd, job step and rank are killed. Slurm ends the job within 30 s and requeues it;
    the console says so in one line naming the node. Once the node's slurmd is back, the job starts again,
    resumes from its latest checkpoint and ends as the uninterrupted run does."""
    uninterrupted = tmp_path / "uninterrupted"
    reference = subprocess.Popen([sys.executable, str(REPO / "launch.py"), f"hydra.run.dir={uninterrupted}", *LONG],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sweep, console = tmp_path / "sweep", tmp_path / "console.txt"
    with console.open("w") as out:
        sweeping = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *ON_TWO_NODES, f"hydra.sweep.dir={sweep}",
                                     *LONG, "parallel=tp2"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
    job = sweep / "0"
    try:
        deadline = time.time() + 300
        while not (job / "checkpoints" / "step-10").is_dir():
            assert sweeping.poll() is None and time.time() < deadline, console.read_text()[-3000:]
            time.sleep(0.05)
        job_id = read_json(job / "provenance.json")["slurm_job_id"]
        killed = time.time()
        _node("kill", "llmx-n2")
        while "node llmx-n2" not in console.read_text():
            assert time.time() - killed < 30, f"the job still runs 30 s after its node died: {console.read_text()[-2000:]}"
            time.sleep(0.2)
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        assert state.strip() == "PENDING", state  # requeued, waiting for the node
    finally:
        _node("start", "llmx-n2")
    assert sweeping.wait(timeout=300) == 0, console.read_text()[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    [line] = [line for line in console.read_text().splitlines() if "node llmx-n2" in line]
    assert line == (f"slurm job {job_id}: node llmx-n2 (down: Not responding) failed; Slurm requeued the job, "
                    "which resumes from its latest checkpoint once enough nodes are up")
    summary = read_json(job / "summary.json")
    assert summary["steps"] == STEPS and summary["resumed_from"].startswith("step-"), summary
    assert "Restarts=1" in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    got, want = train_losses(job), train_losses(uninterrupted)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(10, STEPS + 1, 10))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)
    assert summary["final_loss"] == pytest.approx(read_json(uninterrupted / "summary.json")["final_loss"], rel=1e-5)


def test_a_node_whose_name_resolves_to_loopback_is_refused(monkeypatch):
    """gloo binds to the address of the host's name: on a node where that is loopback, a multi-node job
    is refused with one line before any rank starts (paddle-free)."""
    import socket

    from llmx.errors import UserError
    from llmx.launcher import check_gloo_address

    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    monkeypatch.setenv("SLURMD_NODENAME", "n7")
    with pytest.raises(UserError, match=r"^a job over 2 nodes .* on node n7 the name 'localhost' resolves to "
                                        r"127\.0\.0\.1, which the other nodes cannot reach"):
        check_gloo_address(2)
