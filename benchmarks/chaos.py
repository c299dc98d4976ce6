"""Chaos cases: videos made while a stage, the sink or the `pavdm` process is killed, then checked frame by frame."""

from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import av
import numpy as np
import psutil
import ray
import torch
from hypothesis import strategies as st

from actors.backends.factory import build_codec
from benchmarks.cli_process import cli, frames_written, wait_until
from orchestrator.core.config import Config
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import Checkpointer
from orchestrator.engine.runner import run_jobs
from orchestrator.entry.generate import generate
from orchestrator.state.outputs import enlarge, read_latents
from orchestrator.state.runs import RunFolder
from orchestrator.state.segments import closed_segments, demux_frames
from orchestrator.state.settings import load_config

IN_DRIVER = ("stage", "sink", "checkpoint")  # killed from the driver, this process: one or two streams
IN_CHILD = ("process", "torn", "join")  # a `pavdm generate` child killed, then `pavdm resume`: one stream
KILLS = IN_DRIVER + IN_CHILD
FPS = 8
TOLERANCE = 1  # grey frames in lossless H.264 (crf 0): only the RGB <-> YUV rounding is left
OVERRIDES = [
    f"fps={FPS}", "pipeline.executor=ray", "pipeline.num_cpus=0.5", "pipeline.max_streams=2", "metrics.port=0",
    "model.height=16", "model.width=16", "model.channels=1", "schedule.noisy_chunks=2", "schedule.steps=2",
    "output.crf=0", "recovery.backoff_seconds=0.1", "recovery.max_restarts=2",
]


@dataclass(frozen=True)
class Case:
    kill: str  # what dies: one of KILLS
    chunk: int  # schedule.chunk, latent frames per chunk
    every_shifts: int  # checkpoint.every_shifts
    every_seconds: float  # checkpoint.every_seconds (0: by count only)
    frames: tuple[int, ...]  # each stream's length in frames: with the cadence, this sets the segments' lengths
    at: float  # when: a share of the first stream's frames; for `checkpoint` also 50 * the seconds into it, for
    # `torn` the share of the checkpoint left, for `join` below 0.5 as the join starts (the last segment closed),
    # else as it ends (the MP4 renamed into place)
    seed: int


CHUNKS, EVERY_SHIFTS, EVERY_SECONDS, SHORTEST, WHEN = (1, 3), (1, 3), (0.0, 0.05), 3, (0.1, 0.9)  # the case space


def streams(kill: str) -> int:
    """Most streams a case of this kill has."""
    return 2 if kill in IN_DRIVER else 1


def cases(kills: tuple[str, ...] = KILLS, max_frames: int = 40) -> st.SearchStrategy[Case]:
    """Chaos cases over window, checkpoint cadence, video lengths, stream count and kill point (hypothesis)."""

    def with_kill(kill: str) -> st.SearchStrategy[Case]:
        return st.builds(Case, kill=st.just(kill), chunk=st.integers(*CHUNKS), every_shifts=st.integers(*EVERY_SHIFTS),
                         every_seconds=st.sampled_from(EVERY_SECONDS),
                         frames=st.lists(st.integers(SHORTEST, max_frames), min_size=1, max_size=streams(kill))
                         .map(tuple), at=st.floats(*WHEN), seed=st.integers(0, 2**31))

    return st.sampled_from(kills).flatmap(with_kill)


def random_case(rng: random.Random, kill: str, max_frames: int) -> Case:
    """A case drawn uniformly from the same space (the soak: even coverage rather than hypothesis' edges)."""
    frames = tuple(rng.randint(SHORTEST, max_frames) for _ in range(rng.randint(1, streams(kill))))
    return Case(kill, rng.randint(*CHUNKS), rng.randint(*EVERY_SHIFTS), rng.choice(EVERY_SECONDS), frames,
                rng.uniform(*WHEN), rng.randrange(2**31))


@dataclass
class Outcome:
    kills: int  # kills that happened (0 when the video was done before the kill point)
    frames: int  # frames checked


def video(folder: Path, stream: int) -> Path:
    """Where a stream's MP4 goes (its latents beside, .arrow)."""
    return folder / f"s{stream}.mp4"


def overrides(case: Case, stream: int, folder: Path) -> list[str]:
    """The settings of one stream of a case, its run in folder/runs/s<stream>, its outputs beside."""
    name = video(folder, stream).with_suffix("")
    return [*OVERRIDES, f"schedule.chunk={case.chunk}", f"checkpoint.every_shifts={case.every_shifts}",
            f"checkpoint.every_seconds={case.every_seconds}", f"seconds={case.frames[stream] / FPS}",
            f"seed={case.seed + stream}", f"run.root={folder / 'runs'}",
            f"run.id=s{stream}", f"output.out={name}.mp4", f"output.latents_out={name}.arrow"]


def stream_config(case: Case, stream: int, folder: Path, *extra: str) -> Config:
    """The config of one stream of a case (see overrides), with `extra` overrides."""
    return load_config([], [*overrides(case, stream, folder), *extra], model="gaussian")


def run_case(case: Case, folder: Path, address: str) -> Outcome:
    """Make every stream of `case` (killing what it says) in `folder`, on the Ray cluster at `address`, which this
    process has joined; check each against an uninterrupted run of the same settings, made in process (the same
    video as on Ray, docs/design.md §3)."""
    kills = (in_driver if case.kill in IN_DRIVER else in_child)(case, folder, address)
    frames = 0
    for stream in range(len(case.frames)):
        uninterrupted = stream_config(case, stream, folder / "uninterrupted", "pipeline.executor=process")
        (folder / "uninterrupted").mkdir(exist_ok=True)
        generate(uninterrupted, progress=False)
        made = stream_config(case, stream, folder)
        frames += check_video(made, read_latents(uninterrupted.output.latents_out), case.frames[stream])
    return Outcome(kills, frames)


class DriverKiller:
    """Kills a stage (SIGKILL), the sink (ray.kill), or the sink `delay` seconds into a checkpoint (SIGKILL; a
    checkpoint takes some 10 to 100 ms here: closing the segments, then writing the file), once the first stream
    has `target` frames."""

    def __init__(self, kill: str, target: int, delay: float):
        self.kill, self.target, self.delay = kill, target, delay
        self.pipeline, self.kills, self.armed = None, 0, False

    def on_pipeline(self, pipeline) -> None:
        self.pipeline = pipeline

    def on_frames(self, frames: int) -> None:
        if self.kills or self.armed or frames < self.target or self.pipeline is None:
            return
        if self.kill == "stage":
            os.kill(ray.get(self.pipeline.stages[0].pid.remote()), signal.SIGKILL)
        elif self.kill == "sink":
            ray.kill(self.pipeline.sink)
        else:
            self.armed = True  # at the next checkpoint
            return
        self.kills = 1

    def timed(self, original):
        """Checkpointer.timed, which kills the sink just after asking it for the checkpoint once armed."""

        def timed(checkpointer: Checkpointer, take):
            if self.armed and not self.kills:
                pid = ray.get(self.pipeline.sink.__ray_call__.remote(lambda sink: os.getpid()))
                threading.Timer(self.delay, os.kill, (pid, signal.SIGKILL)).start()
                self.kills = 1
            return original(checkpointer, take)

        return timed


def in_driver(case: Case, folder: Path, address: str) -> int:
    configs = [stream_config(case, stream, folder) for stream in range(len(case.frames))]
    jobs = [StreamJob(config, RunFolder.create(config)) for config in configs]
    killer = DriverKiller(case.kill, max(1, int(case.at * case.frames[0])), case.at * 0.02)
    jobs[0].on_frames = killer.on_frames
    with mock.patch.object(Checkpointer, "timed", killer.timed(Checkpointer.timed)):
        run_jobs(configs[0], JobQueue(jobs, closed=True), PipelineMetrics("chaos", 1), on_executor=killer.on_pipeline)
    for job in jobs:
        assert job.error is None, job.error
    return killer.kills


def in_child(case: Case, folder: Path, address: str) -> int:
    """`pavdm generate` on the cluster, SIGKILLed at the kill point, then `pavdm resume` once the dead run's actors
    are gone."""
    env = {**os.environ, "RAY_ADDRESS": address}
    run = folder / "runs" / "s0"
    frames = case.frames[0]

    def at_kill_point() -> bool:
        if case.kill == "join" and case.at < 0.5:
            return any(end == frames for _, end, _ in closed_segments(run / "segments", "seg"))
        if case.kill == "join":
            return video(folder, 0).exists()
        return frames_written(folder, "s0") >= case.at * frames

    process = cli("generate", "--model", "gaussian", "--quiet", *overrides(case, 0, folder), cwd=folder, wait=False,
                  env=env)
    wait_until(lambda: at_kill_point() or process.poll() is not None, timeout=120, poll=0.001)
    killed = process.poll() is None
    process.kill()
    _, stderr = process.communicate(timeout=60)
    if not killed:
        assert process.returncode == 0, stderr
        return 0
    wait_until(lambda: not pipeline_actors(), timeout=60)  # the dead run's sink may be writing still
    if case.kill == "torn":
        tear(run / "checkpoints", case.at)
    resumed = cli("resume", str(run), "--quiet", cwd=folder, env=env, timeout=120)
    done = RunFolder(run).status()
    assert resumed.returncode == 0 or (done.state == "completed" and "already complete" in resumed.stderr), \
        resumed.stderr
    return 1


def pipeline_actors() -> list[psutil.Process]:
    """Stage and sink actor processes of the cluster this process started (its raylet's workers)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith(("ray::Stage", "ray::Sink")):
                found.append(process)
        except psutil.Error:
            pass
    return found


def tear(checkpoints: Path, keep: float) -> None:
    """What a crash while writing to a store without atomic renames would leave: the newest checkpoint cut short,
    and a partial one beside it."""
    checkpoints.mkdir(parents=True, exist_ok=True)  # killed before the first checkpoint: only the partial one
    for path in sorted(checkpoints.glob("ckpt-*.arrow"))[-1:]:
        blob = path.read_bytes()
        path.write_bytes(blob[: int(len(blob) * keep)])
    (checkpoints / "ckpt-999999999999.arrow.partial").write_bytes(b"torn")


def check_video(config: Config, uninterrupted: torch.Tensor, frames: int) -> int:
    """The finished MP4 and latents of a run: latents identical to the uninterrupted run's; exactly `frames`
    frames; DTS strictly increasing in decode order, PTS strictly increasing in display order; every decoded frame
    within TOLERANCE of the frame rendered from the latents. Returns the frames checked."""
    latents = read_latents(config.output.latents_out)
    assert torch.equal(latents, uninterrupted), "latents differ from the uninterrupted run"
    rendered = enlarge(build_codec(config.model).decoder().decode(latents), config.output.scale)[:frames].int()
    assert len(rendered) == frames
    with av.open(config.output.out) as container:
        packets = [(packet.pts, packet.dts) for packet in demux_frames(container)]
    with av.open(config.output.out) as container:
        decoded = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    assert len(packets) == len(decoded) == frames, (len(packets), len(decoded), frames)
    dts = [d for _, d in packets]
    assert all(a < b for a, b in zip(dts, dts[1:], strict=False)), f"DTS not strictly increasing: {dts}"
    shown = [pts for pts, _ in decoded]
    assert all(a < b for a, b in zip(shown, shown[1:], strict=False)), f"PTS not strictly increasing: {shown}"
    assert sorted(pts for pts, _ in packets) == shown
    error = (torch.from_numpy(np.stack([image for _, image in decoded])).int() - rendered).abs().max().item()
    assert error <= TOLERANCE, f"a decoded frame differs from its latents by {error}"
    return frames
