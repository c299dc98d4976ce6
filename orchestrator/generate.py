"""One generation: plan the video, then run it in process (reference sampler) or on the Ray pipeline."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from actors.backends.base import Backend, PromptEncodings
from actors.backends.factory import build_backend, frame_count
from actors.codecs import FrameCount
from orchestrator import segments
from orchestrator.config import Config, apply_overrides, video_identity
from orchestrator.errors import UserError, ending
from orchestrator.outputs import check_writable, read_latents, same_file
from orchestrator.partition import Partition
from orchestrator.prompts import ChunkPrompts, PromptSchedule
from orchestrator.rules import check_length
from orchestrator.run_state import (
    CheckpointPolicy,
    StartState,
    checkpoint_meta,
    differing_keys,
    fresh_start,
    start_from,
    write_checkpoint,
)
from orchestrator.runs import RunFolder
from orchestrator.sampler import NoiseSource, sample
from orchestrator.schedule import Geometry, chunks_for_frames
from orchestrator.video_sink import VideoSink, VideoSize, config_path_for, write_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoPlan:
    """Sizes of one video, the window it runs on, and which prompt conditions each chunk."""

    size: VideoSize
    num_chunks: int
    geometry: Geometry
    partition: Partition
    prompts: ChunkPrompts


def plan_video(config: Config, frames_of: FrameCount) -> VideoPlan:
    frames = check_length(config.seconds, config.fps, config.run.max_seconds, "run.max_seconds")
    geometry = Geometry.from_config(config.schedule)
    partition = Partition.from_config(max(config.pipeline.stages, 1), config.pipeline.halo, geometry.noisy)
    latent_frames = frames_of.latent_frames(frames)
    prompts = ChunkPrompts(PromptSchedule.parse(config.prompts), frames_of, geometry.chunk, config.fps)
    size = VideoSize(frames, latent_frames, geometry.chunk)
    return VideoPlan(size, chunks_for_frames(latent_frames, geometry), geometry, partition, prompts)


def initial_chunks(path: str, latent_shape: tuple[int, int, int], chunk: int) -> list[torch.Tensor]:
    """The whole chunks at the end of an Arrow latents file, oldest first (the sampler keeps the last K)."""
    if not path:
        return []
    clip = read_latents(path)  # [Ch, F, h, w]
    frame_shape = (clip.shape[0], *clip.shape[2:])
    if frame_shape != tuple(latent_shape):
        raise UserError(f"init latents have frames of shape {frame_shape}, the model makes {tuple(latent_shape)}")
    whole = clip.shape[1] // chunk
    if whole == 0:
        raise UserError(f"init latents hold {clip.shape[1]} frames, less than one chunk of {chunk}")
    return list(clip[:, clip.shape[1] - whole * chunk :].split(chunk, dim=1))


@dataclass
class GenerationResult:
    frames: int
    seconds: float
    out: Path
    run_id: str = ""
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints (incl. closing segments)
    restarts: int = 0


def check_request(config: Config) -> None:
    """Everything about the request that can be checked before any model is loaded."""
    PromptSchedule.parse(config.prompts)
    check_paths(config)


def check_paths(config: Config) -> None:
    """Outputs of the right kind in writable folders, each a file of its own and none of them an input."""
    named: dict[str, Path] = {}
    if config.init_latents:
        named["--init-latents"] = Path(config.init_latents)
        if not named["--init-latents"].is_file():
            raise UserError(f"init latents file '{config.init_latents}' does not exist")
    if config.output.out:
        out = Path(config.output.out)
        check_writable(out, "--out")
        if out.suffix.lower() != ".mp4":
            raise UserError(f"--out '{out}' must end in .mp4: the video is written as H.264 in MP4")
        named["--out"] = out
        named["--out's saved config"] = config_path_for(out)
    if config.output.latents_out:
        check_writable(Path(config.output.latents_out), "--latents-out")
        named["--latents-out"] = Path(config.output.latents_out)
    for (first, a), (second, b) in itertools.combinations(named.items(), 2):
        if same_file(a, b):
            raise UserError(f"{first} and {second} name the same file '{a}': every output needs a name of its own, "
                            "and no output may replace an input")


def frame_progress(total: int, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, unit="frame", disable=not enabled, desc="generating",
                dynamic_ncols=True)


class Checkpointer:
    """Writes checkpoints of one run when its policy says so, and keeps the status file current."""

    def __init__(self, run: RunFolder, config: Config, plan: VideoPlan, init_count: int):
        self.run, self.plan = run, plan
        self.store = run.checkpoints(config)
        self.policy = CheckpointPolicy(config.checkpoint)
        self.meta = checkpoint_meta(config, init_count)
        self.out = config.output.out
        self.seconds = 0.0

    def timed(self, take: Callable[[], int]) -> float:
        """Run `take`, which makes a checkpoint and returns the frames it covers; count the time it paused the
        run and record the progress in the status file. Returns the seconds spent."""
        started = time.perf_counter()
        frames = take()
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.run.set_status("running", frames, self.plan.size.frames, self.out)
        return seconds


def run_local(config: Config, plan: VideoPlan, backend: Backend, start: StartState, checkpointer: Checkpointer,
              on_frames: Callable[[int], None]) -> Path:
    """The in-process reference sampler feeding a VideoSink, checkpointing at shift boundaries."""
    g = plan.geometry
    noise = NoiseSource(config.seed, (backend.latent_shape[0], g.chunk, *backend.latent_shape[1:]))
    encodings = PromptEncodings(backend)
    sink = VideoSink(config, backend.codec, plan.size, plan.prompts, checkpointer.run.segments,
                     start.sink if start.resumed else None)

    def on_boundary(tick, window) -> None:
        if checkpointer.policy.due():
            checkpointer.timed(lambda: write_checkpoint(sink, checkpointer.store, tick.index + 1, window,
                                                        checkpointer.meta))

    try:
        chunks = sample(backend.velocity, g, plan.num_chunks, noise, lambda c: encodings.get(plan.prompts.of(c)),
                        partition=plan.partition, resume=(start.next_tick, start.window, start.init_count),
                        on_boundary=on_boundary)
        for m, x in chunks:
            on_frames(sink.write(m, x))
        return sink.finish()
    except BaseException:
        sink.abort()
        raise


def initial_state(config: Config, plan: VideoPlan, store, latent_shape) -> StartState:
    """The newest valid checkpoint of the run, or a fresh start from nothing or --init-latents."""
    checkpoint = store.latest()
    if checkpoint is not None:
        return start_from(checkpoint, config)
    return fresh_start(initial_chunks(config.init_latents, latent_shape, plan.geometry.chunk))


def begin(run: RunFolder, config: Config, plan: VideoPlan, latent_shape) -> tuple[StartState, Checkpointer]:
    """Where the run starts (its newest valid checkpoint, or the beginning) and its checkpointer."""
    start = initial_state(config, plan, run.checkpoints(config), latent_shape)
    return start, Checkpointer(run, config, plan, start.init_count)


def made_segments(run: RunFolder, config: Config, size: VideoSize) -> tuple[list[Path], list[Path]] | None:
    """The segments of a run whose frames are all made (only writing the outputs was left), else None."""
    frames, video = segments.covering(run.segments, "seg")
    latent_frames, latents = segments.covering(run.segments, "lat")
    if frames == size.frames and (not config.output.latents_out or latent_frames == size.latent_frames):
        return video, latents
    return None


def execute(run: RunFolder, config: Config, progress: bool) -> GenerationResult:
    """Run (or continue) a run to completion, keeping its status file true."""
    plan = plan_video(config, frame_count(config.model))
    started = time.perf_counter()
    run.set_status("running", None, plan.size.frames, config.output.out)
    made = made_segments(run, config, plan.size)
    try:
        if made is not None:  # every frame is in segments: only the outputs are left to write
            out, restarts, checkpoint_seconds = write_outputs(config, run.segments, *made), 0, 0.0
        elif config.pipeline.stages == 0:
            backend = build_backend(config.model)
            start, checkpointer = begin(run, config, plan, backend.latent_shape)
            with frame_progress(plan.size.frames, progress, start.sink.frames) as bar:
                out = run_local(config, plan, backend, start, checkpointer, lambda n: bar.update(n - bar.n))
            restarts, checkpoint_seconds = 0, checkpointer.seconds
        else:
            from orchestrator.controller import run_pipeline

            job, restarts = run_pipeline(config, run, progress)
            out, checkpoint_seconds = job.out, job.checkpoint_seconds
    except BaseException as err:
        state, reason = ending(err)
        run.set_status(state, None, plan.size.frames, config.output.out, reason)
        raise
    run.set_status("completed", plan.size.frames, plan.size.frames, str(out))
    return GenerationResult(plan.size.frames, time.perf_counter() - started, out, run.run_id, checkpoint_seconds,
                            restarts)


def generate(config: Config, progress: bool = True) -> GenerationResult:
    """Start a new run; its outputs appear under their final names only if it completes.

    pipeline.stages = 0 runs the reference sampler in this process; P >= 1 runs the Ray pipeline.
    """
    check_request(config)
    plan = plan_video(config, frame_count(config.model))  # topology and length errors before any folder exists
    for line in plan.prompts.never_shown(plan.num_chunks):
        log.warning(line)
    run = RunFolder.create(config)
    try:
        return execute(run, config, progress)
    except UserError:
        run.discard_if_unused(run.checkpoints(config))  # bad input found late (e.g. resources): leave nothing
        raise


def resume(run_ref: str, root: str, overrides: list[str], progress: bool = True, out: str | None = None,
           latents_out: str | None = None) -> GenerationResult:
    """Continue a stopped run from its newest valid checkpoint; refuse overrides that change the video. `out`
    and `latents_out` move its outputs (the latents only where the run writes them)."""
    run = RunFolder.find(run_ref, root)
    saved = run.load_config()
    config = apply_overrides(saved, overrides)
    if out:
        config.output.out = str(Path(out).resolve())
    if latents_out:
        if not saved.output.latents_out:
            raise UserError(f"run {run.run_id} writes no latents; --latents-out cannot be added when resuming")
        config.output.latents_out = str(Path(latents_out).resolve())
    changed = differing_keys(video_identity(saved), video_identity(config))
    if changed:
        raise UserError(f"cannot resume with settings that change the video: {', '.join(changed)}")
    status = run.status()
    if status is not None and status.state == "completed":
        raise UserError(f"run {run.run_id} is already complete: {status.out}")
    check_request(config)
    run.save_config(config)
    return execute(run, config, progress)
