"""One generation: plan the video, then run it in process (reference sampler) or on the Ray pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from actors.backends.base import Backend, PromptEncodings
from actors.backends.factory import build_backend, frame_count
from actors.codecs import FrameCount
from orchestrator.config import Config
from orchestrator.errors import UserError
from orchestrator.outputs import check_writable, read_latents
from orchestrator.partition import Partition
from orchestrator.prompts import ChunkPrompts, PromptSchedule
from orchestrator.sampler import NoiseSource, sample
from orchestrator.schedule import Geometry, chunks_for_frames
from orchestrator.video_sink import VideoSink, VideoSize


@dataclass(frozen=True)
class VideoPlan:
    """Sizes of one video, the window it runs on, and which prompt conditions each chunk."""

    size: VideoSize
    num_chunks: int
    geometry: Geometry
    partition: Partition
    prompts: ChunkPrompts


def plan_video(config: Config, frames_of: FrameCount) -> VideoPlan:
    frames = round(config.seconds * config.fps)
    if frames < 1:
        raise UserError(f"{config.seconds:g} seconds at {config.fps:g} fps is less than one frame")
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


def check_request(config: Config) -> None:
    """Everything about the request that can be checked before any model is loaded."""
    PromptSchedule.parse(config.prompts)
    check_writable(Path(config.output.out), "--out")
    if config.output.latents_out:
        check_writable(Path(config.output.latents_out), "--latents-out")
    if config.init_latents and not Path(config.init_latents).is_file():
        raise UserError(f"init latents file '{config.init_latents}' does not exist")


def frame_progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="frame", disable=not enabled, desc="generating", dynamic_ncols=True)


def run_local(config: Config, plan: VideoPlan, backend: Backend, on_frames: Callable[[int], None]) -> Path:
    """The in-process reference sampler feeding a VideoSink."""
    g = plan.geometry
    context = initial_chunks(config.init_latents, backend.latent_shape, g.chunk)
    noise = NoiseSource(config.seed, (backend.latent_shape[0], g.chunk, *backend.latent_shape[1:]))
    encodings = PromptEncodings(backend)
    sink = VideoSink(config, backend.codec, plan.size, plan.prompts)
    try:
        for m, x in sample(backend.velocity, g, plan.num_chunks, noise, lambda c: encodings.get(plan.prompts.of(c)),
                           context, plan.partition):
            on_frames(sink.write(m, x))
        return sink.finish()
    except BaseException:
        sink.abort()
        raise


def generate(config: Config, progress: bool = True) -> GenerationResult:
    """Run the whole job; outputs appear under their final names only if it completes.

    pipeline.stages = 0 runs the reference sampler in this process; P >= 1 runs the Ray pipeline.
    """
    check_request(config)
    plan = plan_video(config, frame_count(config.model))
    started = time.perf_counter()
    bar = frame_progress(plan.size.frames, progress)
    try:
        if config.pipeline.stages == 0:
            out = run_local(config, plan, build_backend(config.model), lambda n: bar.update(n - bar.n))
        else:
            from orchestrator.controller import run_pipeline

            out = run_pipeline(config, plan, bar)
    finally:
        bar.close()
    return GenerationResult(plan.size.frames, time.perf_counter() - started, out)
