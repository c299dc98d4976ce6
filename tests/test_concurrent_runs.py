"""Runs started side by side on one machine each start their own Ray cluster and make their own, unchanged video."""

import os
import shutil
import tempfile
from pathlib import Path

import torch
from conftest import probe_mp4

from benchmarks.cli_process import cli
from orchestrator.state.outputs import read_latents

SEEDS = (4, 5, 6)
ARGS = ["--model", "gaussian", "--quiet", "--seconds", "4", "--fps", "8", "pipeline.executor=ray",
        "pipeline.num_cpus=0.5", "model.height=16", "model.width=16", "schedule.chunk=2", "schedule.noisy_chunks=2",
        "schedule.steps=2", "checkpoint.every_shifts=3"]


def generate(cwd: Path, name: str, seed: int, *extra: str, wait: bool = True, **env: str):
    """`pavdm generate` without RAY_ADDRESS (so it starts a cluster of its own), with `env` added."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    return cli("generate", *ARGS, "--seed", str(seed), "--out", str(cwd / f"{name}.mp4"),
               "--latents-out", str(cwd / f"{name}.arrow"), *extra, cwd=cwd, wait=wait, env=environment, timeout=180)


def test_three_runs_started_at_once_each_make_the_video_they_make_alone(tmp_path):
    alone = {}
    for seed in SEEDS:  # the same videos made one at a time, in process (the same video as on Ray, docs/design.md §3)
        result = generate(tmp_path, f"alone{seed}", seed, "pipeline.executor=process")
        assert result.returncode == 0, result.stderr
        alone[seed] = read_latents(tmp_path / f"alone{seed}.arrow")
    together = tmp_path / "together"
    together.mkdir()
    processes = [generate(together, f"run{seed}", seed, wait=False) for seed in SEEDS]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    runs = sorted(path.name for path in (together / "runs").iterdir())
    assert len(runs) == 3, runs  # one run folder each, ids that never collide
    for seed in SEEDS:
        assert torch.equal(read_latents(together / f"run{seed}.arrow"), alone[seed]), seed
        assert probe_mp4(together / f"run{seed}.mp4")[0] == 32


def test_a_run_never_joins_a_cluster_that_ray_start_left_on_the_machine(tmp_path):
    """`ray start` records its cluster in <RAY_TMPDIR>/ray/ray_current_cluster, which a bare ray.init() joins."""
    temp = Path(tempfile.mkdtemp(prefix="pavdm-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # a cluster no longer there
        result = generate(tmp_path, "own", SEEDS[0], RAY_TMPDIR=str(temp))
        assert result.returncode == 0, result.stderr
        assert probe_mp4(tmp_path / "own.mp4")[0] == 32
    finally:
        shutil.rmtree(temp, ignore_errors=True)
