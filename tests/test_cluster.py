"""A real two-node Ray cluster on this machine: stages spread over both nodes, one node lost mid-run, same video."""

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import ray
import torch
from conftest import probe_mp4

from benchmarks.serve_process import free_port, free_ports
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.runner import run_jobs
from orchestrator.state.outputs import read_latents
from orchestrator.state.runs import RunFolder
from orchestrator.state.settings import load_config

SECOND = "second_node"  # the custom resource only the second node has
FRAMES = 320
OVERRIDES = [
    "seconds=40", "pipeline.stages=2", "pipeline.spread=true", "pipeline.num_cpus=0.5", "pipeline.start_timeout=60",
    "metrics.port=0", "model.height=16", "model.width=16", "model.channels=1", "schedule.chunk=2",
    "schedule.noisy_chunks=2", "schedule.steps=4", "checkpoint.every_shifts=4", "checkpoint.every_seconds=0",
    "recovery.max_restarts=5", "recovery.backoff_seconds=0.5",
]
# The cluster notices a lost node after health_check_failure_threshold missed checks, every period: ~5 s, not ~30 s.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                      "RAY_health_check_failure_threshold": "5"}


def ray_start(env: dict, *args: str) -> None:
    command = [str(Path(sys.executable).parent / "ray"), "start", *args, "--disable-usage-stats",
               "--object-store-memory=100000000"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def processes_of(temp: Path) -> list[psutil.Process]:
    """Every process of the cluster whose session lives under `temp` (they name it), with their children."""
    roots = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(temp) in arg for arg in process.info["cmdline"] or []):
            roots.append(process)
    found = {process.pid: process for process in roots}
    for root in roots:
        try:
            found |= {child.pid: child for child in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def two_nodes(monkeypatch):
    """`ray start --head` and a second `ray start --address` node with its own resource, in a temporary folder of
    their own (so no other Ray on this machine sees them), joined through RAY_ADDRESS; stopped by process."""
    temp = Path(tempfile.mkdtemp(prefix="pavdm-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": "disabled", **FAST_HEALTH_CHECKS}
    env.pop("RAY_ADDRESS", None)
    try:
        gcs, client, agent = free_ports(3)
        ray_start(env, "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                  f"--dashboard-agent-listen-port={agent}", "--num-cpus=1", "--include-dashboard=false")
        address = (temp / "ray" / "ray_current_cluster").read_text().strip()
        ray_start(env, f"--address={address}", f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=1",
                  f'--resources={{"{SECOND}": 1}}')
        # For the drivers, each in a fresh process: Ray settles its authentication mode once per process.
        monkeypatch.setenv("RAY_ADDRESS", address)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        yield temp
    finally:
        kill(processes_of(temp))
        shutil.rmtree(temp, ignore_errors=True)


def node_ids() -> tuple[str, str]:
    """(head, second) node ids of the cluster this process is connected to."""
    alive = [node for node in ray.nodes() if node["Alive"]]
    second = [node["NodeID"] for node in alive if SECOND in node["Resources"]]
    return [node["NodeID"] for node in alive if SECOND not in node["Resources"]][0], second[0]


def drive(name: str, temp: Path, lose_second_at: int | None, results) -> None:
    """One video through run_jobs, which joins the cluster through RAY_ADDRESS; when the first stream has
    `lose_second_at` frames, the second node's raylet is SIGKILLed. Puts (restarts, the node of every stage of
    every pipeline built, (head, second) node ids, the job's error) on `results`."""
    config = load_config([], [*OVERRIDES, f"output.out={name}.mp4", f"output.latents_out={name}.arrow"],
                         model="gaussian")
    job = StreamJob(config, RunFolder.create(config))
    placements, nodes, lost = [], [], []

    def record(pipeline) -> None:
        if pipeline is not None:
            nodes[:] = nodes or node_ids()
            placements.append(ray.get([stage.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                                       for stage in pipeline.stages]))

    def lose_the_second_node(frames: int) -> None:
        if lose_second_at is not None and frames >= lose_second_at and not lost:
            lost.extend(p for p in processes_of(temp) if p.name() == "raylet"
                        and any(SECOND in arg for arg in p.cmdline()))
            workers = lost[0].children(recursive=True)  # a lost node takes its workers (the stage) with it
            for process in [lost[0], *workers]:
                process.send_signal(signal.SIGKILL)

    job.on_frames = lose_the_second_node
    restarts = run_jobs(config, JobQueue([job], closed=True), PipelineMetrics(name, 2), on_executor=record)
    results.put((restarts, placements, tuple(nodes), None if job.error is None else repr(job.error)))


def run(name: str, temp: Path, lose_second_at: int | None = None) -> tuple[int, list[list[str]], tuple[str, str]]:
    """drive() in a fresh process, bounded in time: (restarts, placements, (head, second))."""
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    driver = spawn.Process(target=drive, args=(name, temp, lose_second_at, results))
    driver.start()
    try:
        restarts, placements, nodes, error = results.get(timeout=150)
    finally:
        driver.join(timeout=30)
        driver.kill()
    assert error is None, error
    return restarts, placements, nodes


def test_stages_on_two_nodes_then_one_node_lost_mid_run_gives_the_same_video(two_nodes):
    restarts, placements, (head, second) = run("whole", two_nodes)
    assert restarts == 0 and sorted(placements[0]) == sorted([head, second])  # one stage on each node
    restarts, placements, _ = run("killed", two_nodes, lose_second_at=40)
    assert restarts >= 1
    assert sorted(placements[0]) == sorted([head, second]) and placements[-1] == [head, head]
    assert torch.equal(read_latents("killed.arrow"), read_latents("whole.arrow"))
    assert probe_mp4("killed.mp4")[0] == probe_mp4("whole.mp4")[0] == FRAMES
