"""Impossible topologies and stages that cannot build their model end the CLI with one line, exit code 2,
and no Ray processes left behind."""

import subprocess
import sys
import time

import pytest

RAY_DAEMONS = ("raylet", "gcs_server")


def ray_processes() -> set[int]:
    ps = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout.splitlines()[1:]
    return {int(line.split()[0]) for line in ps if any(d in line for d in RAY_DAEMONS)}


def run_cli(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.entry.cli", "generate", "--quiet", "--seconds", "1",
         "--out", str(tmp_path / "v.mp4"), "metrics.port=0", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gaussian", "pipeline.stages=7"], "exceeds the 6 noisy chunks"),
        (["--model", "gaussian", "pipeline.num_gpus=1"], "need 1 GPUs but the Ray cluster has 0"),
        (["--model", "gaussian", "pipeline.stages=3", "pipeline.num_cpus=1"], "need 3 CPUs"),
        (["model.backend=diffusers", "model.path=."], "cannot load a SkyReels-V2 transformer from '.'"),
        (["model.backend=diffusers", "model.path=.", "pipeline.executor=ray"], "a stage could not build its model"),
    ],
)
def test_pipeline_failures_are_clean(tmp_path, args, message):
    before = ray_processes()
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "v.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    deadline = time.time() + 15
    while ray_processes() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, "Ray processes left behind"


def test_cli_runs_the_ray_pipeline(tmp_path):
    """In halo mode, with the one line that says the video is not PA-VDM's."""
    result = run_cli(tmp_path, "--model", "gaussian", "pipeline.stages=2", "pipeline.num_cpus=0.5",
                     "pipeline.parallel=halo", "pipeline.halo=1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("the video differs from PA-VDM's") == 1
    assert (tmp_path / "v.mp4").exists() and (tmp_path / "v.config.yaml").exists()
