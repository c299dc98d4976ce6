"""Runs survive SIGKILLed stages and controllers and resume to the identical video; damaged state is refused."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import probe_mp4
from test_pipeline import reference_latents

from actors.backends.factory import frame_count
from benchmarks.cli_process import cli, frames_written, wait_until
from orchestrator.engine.plan import plan_video
from orchestrator.entry.cli import generate_config, parse_command_line
from orchestrator.state.outputs import read_latents

FRAMES = 240
ARGS = [
    "--model", "gaussian", "--quiet", "--seconds", "30", "--fps", "8", "metrics.port=0",
    "pipeline.stages=2", "pipeline.num_cpus=0.5", "pipeline.parallel=halo", "pipeline.halo=1",
    "model.height=32", "model.width=32",
    "schedule.chunk=2", "schedule.noisy_chunks=4", "schedule.steps=8", "checkpoint.every_shifts=5",
    "recovery.backoff_seconds=0.2",
]


def generate(cwd: Path, name: str, *extra: str, wait: bool = True):
    return cli("generate", *ARGS, "--out", str(cwd / f"{name}.mp4"), "--latents-out", str(cwd / f"{name}.arrow"),
               f"run.id={name}", *extra, cwd=cwd, wait=wait)


def stage_pids() -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return [int(line.split()[0]) for line in ps if "ray::Stage" in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> torch.Tensor:
    """Latents of the uninterrupted run."""
    cwd = tmp_path_factory.mktemp("reference")
    result = generate(cwd, "ref")
    assert result.returncode == 0, result.stderr
    return read_latents(cwd / "ref.arrow")


def test_killed_stage_recovers_to_the_identical_video(tmp_path, reference):
    process = generate(tmp_path, "kill1", wait=False)
    wait_until(lambda: frames_written(tmp_path, "kill1") >= 40)
    os.kill(random.choice(stage_pids()), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "restart 1 of 3" in stderr
    assert torch.equal(read_latents(tmp_path / "kill1.arrow"), reference)
    assert probe_mp4(tmp_path / "kill1.mp4")[0] == FRAMES


def test_three_kills_at_random_shifts(tmp_path, reference):
    rng = random.Random(7)
    process = generate(tmp_path, "kill3", wait=False)
    for low, high in [(10, 60), (80, 130), (150, 200)]:
        target = rng.randint(low, high)
        wait_until(lambda t=target: frames_written(tmp_path, "kill3") >= t or process.poll() is not None)
        wait_until(lambda: len(stage_pids()) == 2 or process.poll() is not None)
        if process.poll() is None:
            os.kill(rng.choice(stage_pids()), signal.SIGKILL)
            time.sleep(0.5)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert stderr.count("from the last checkpoint") == 3
    assert torch.equal(read_latents(tmp_path / "kill3.arrow"), reference)


def test_killed_controller_resumes_to_the_identical_video(tmp_path, reference):
    process = generate(tmp_path, "ctl", wait=False)
    wait_until(lambda: frames_written(tmp_path, "ctl") >= 60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = tmp_path / "runs" / "ctl"
    assert not (tmp_path / "ctl.mp4").exists() and not (tmp_path / "ctl.arrow").exists()
    assert [p.name for p in run.rglob("*.mp4") if not p.name.startswith("seg-")] == []
    listing = cli("runs", cwd=tmp_path).stdout
    assert "ctl" in listing and "stopped" in listing
    result = cli("resume", "ctl", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert torch.equal(read_latents(tmp_path / "ctl.arrow"), reference)
    assert probe_mp4(tmp_path / "ctl.mp4")[0] == FRAMES
    assert "completed" in cli("runs", cwd=tmp_path).stdout


def test_resume_refuses_changed_video_settings_and_skips_damaged_checkpoints(tmp_path, reference):
    process = generate(tmp_path, "dmg", wait=False)
    wait_until(lambda: frames_written(tmp_path, "dmg") >= 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    refused = cli("resume", "dmg", "--quiet", "schedule.steps=12", "output.scale=2", "schedule.context_level=1",
                  "schedule.stochasticity=0.3", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [  # the frames already written have the old size
        "pavdm: error: cannot resume with settings that change the video: "
        "output.scale, schedule.context_level, schedule.steps, schedule.stochasticity"
    ]
    checkpoints = sorted((tmp_path / "runs" / "dmg" / "checkpoints").glob("ckpt-*.arrow"))
    assert len(checkpoints) == 3
    newest, middle = checkpoints[-1], checkpoints[-2]
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    newest.write_bytes(bytes(blob))
    middle.write_bytes(middle.read_bytes()[: len(middle.read_bytes()) // 3])
    result = cli("resume", "dmg", "--quiet", "metrics.port=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("skipping damaged checkpoint") == 2
    assert torch.equal(read_latents(tmp_path / "dmg.arrow"), reference)
    assert probe_mp4(tmp_path / "dmg.mp4")[0] == FRAMES


@pytest.mark.parametrize("solver,eta", [("dpmpp_2m", "0"), ("dpmpp_3m", "0.5")])
def test_multistep_history_survives_a_killed_stage_and_a_killed_controller(tmp_path, solver, eta):
    """Issue 37: every chunk's solver history lives in its stage, crosses bands with it and is in the checkpoints,
    so a killed stage (rebuilt from the last checkpoint) and a killed controller (resumed) give the uninterrupted
    video; a resume with another solver is refused, naming the key."""
    settings = ("--seconds", "16", f"schedule.solver={solver}", f"schedule.stochasticity={eta}")  # 128 frames
    process = generate(tmp_path, "hit", *settings, wait=False)
    wait_until(lambda: frames_written(tmp_path, "hit") >= 30)
    os.kill(random.choice(stage_pids()), signal.SIGKILL)
    wait_until(lambda: frames_written(tmp_path, "hit") >= 70)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert "restart 1 of 3" in stderr
    refused = cli("resume", "hit", "--quiet", "schedule.solver=euler", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("cannot resume with settings that change the video: schedule.solver")
    result = cli("resume", "hit", "--quiet", "metrics.port=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert torch.equal(read_latents(tmp_path / "hit.arrow"), uninterrupted(tmp_path, *settings))


def uninterrupted(cwd: Path, *extra: str) -> torch.Tensor:
    """The latents an uninterrupted `generate` with these settings makes, from the reference sampler in this process
    (the pipeline equals it for every partition: tests/test_pipeline.py)."""
    config = generate_config(parse_command_line(["generate", *ARGS, *extra, "--out", str(cwd / "whole.mp4")]))
    return reference_latents(config, plan_video(config, frame_count(config.model)).partition)
