"""One generation in one process: plan the video, run the reference sampler, decode and write as chunks finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from actors.backends.base import Backend
from actors.backends.factory import build_backend
from orchestrator.config import Config, to_yaml
from orchestrator.errors import UserError
from orchestrator.outputs import AtomicFiles, LatentsWriter, Mp4Writer, check_writable, read_latents
from orchestrator.partition import Partition
from orchestrator.prompts import PromptSchedule
from orchestrator.sampler import NoiseSource, sample
from orchestrator.schedule import Geometry, chunks_for_frames


@dataclass(frozen=True)
class VideoPlan:
    """Sizes of one video: requested frames, latent frames, chunks, and the window it runs on."""

    frames: int
    latent_frames: int
    num_chunks: int
    geometry: Geometry
    partition: Partition


def plan_video(config: Config, backend: Backend) -> VideoPlan:
    frames = round(config.seconds * config.fps)
    if frames < 1:
        raise UserError(f"{config.seconds:g} seconds at {config.fps:g} fps is less than one frame")
    geometry = Geometry.from_config(config.schedule)
    partition = Partition.from_config(config.pipeline.stages, config.pipeline.halo, geometry.noisy)
    latent_frames = backend.codec.latent_frames(frames)
    return VideoPlan(frames, latent_frames, chunks_for_frames(latent_frames, geometry), geometry, partition)


class Conditioning:
    """Which prompt conditions chunk m (by the time its first frame is shown), encoded once per prompt."""

    def __init__(self, backend: Backend, prompts: PromptSchedule, geometry: Geometry, fps: float):
        self.backend, self.prompts, self.geometry, self.fps = backend, prompts, geometry, fps
        self.encoded: dict[str, Any] = {}

    def prompt_of(self, chunk: int) -> str:
        first_frame = self.backend.codec.video_frames(chunk * self.geometry.chunk)
        return self.prompts.at(first_frame / self.fps)

    def cond_at(self, chunk: int) -> Any:
        text = self.prompt_of(chunk)
        if text not in self.encoded:
            self.encoded[text] = self.backend.encode_prompt(text)
        return self.encoded[text]


def initial_chunks(config: Config, backend: Backend, geometry: Geometry) -> list[torch.Tensor]:
    """The whole chunks at the end of --init-latents, oldest first (the sampler keeps the last K)."""
    if not config.init_latents:
        return []
    clip = read_latents(config.init_latents)  # [Ch, F, h, w]
    if tuple(clip.shape[:1] + clip.shape[2:]) != backend.latent_shape:
        raise UserError(
            f"init latents have frames of shape {tuple(clip.shape[:1] + clip.shape[2:])}, "
            f"the model makes {backend.latent_shape}"
        )
    whole = clip.shape[1] // geometry.chunk
    if whole == 0:
        raise UserError(f"init latents hold {clip.shape[1]} frames, less than one chunk of {geometry.chunk}")
    return list(clip[:, clip.shape[1] - whole * geometry.chunk :].split(geometry.chunk, dim=1))


def config_path_for(out: Path) -> Path:
    """Where the resolved config of an output is saved: video.mp4 -> video.config.yaml."""
    return out.with_name(out.stem + ".config.yaml")


@dataclass
class GenerationResult:
    frames: int
    latent_frames: int
    ticks: int
    seconds: float
    out: Path


def check_outputs(config: Config) -> None:
    check_writable(Path(config.output.out), "--out")
    if config.output.latents_out:
        check_writable(Path(config.output.latents_out), "--latents-out")
    if config.init_latents and not Path(config.init_latents).is_file():
        raise UserError(f"init latents file '{config.init_latents}' does not exist")


def generate(config: Config, progress: bool = True, on_frames: Callable[[int], None] | None = None) -> GenerationResult:
    """Run the whole job; outputs appear under their final names only if it completes."""
    prompts = PromptSchedule.parse(config.prompts)
    check_outputs(config)
    backend = build_backend(config.model)
    video = plan_video(config, backend)
    conditioning = Conditioning(backend, prompts, video.geometry, config.fps)
    context = initial_chunks(config, backend, video.geometry)
    chunk_shape = (backend.latent_shape[0], video.geometry.chunk, *backend.latent_shape[1:])

    out = Path(config.output.out)
    files = AtomicFiles()
    config_file = files.reserve(config_path_for(out))
    config_file.write_text(to_yaml(config))
    height, width = config.model.height, config.model.width
    mp4 = Mp4Writer(files.reserve(out), config.fps, width, height, config.output.crf)
    latents = None
    if config.output.latents_out:
        latents = LatentsWriter(files.reserve(Path(config.output.latents_out)), backend.latent_shape)
    decoder = backend.codec.decoder()
    ticks_done = 0

    def count_tick(_tick) -> None:
        nonlocal ticks_done
        ticks_done += 1

    started = time.perf_counter()
    bar = tqdm(total=video.frames, unit="frame", disable=not progress, desc="generating", dynamic_ncols=True)
    try:
        chunks = sample(
            backend.velocity, video.geometry, video.num_chunks, NoiseSource(config.seed, chunk_shape),
            conditioning.cond_at, context, video.partition, count_tick,
        )
        for m, x in chunks:
            keep = min(video.geometry.chunk, video.latent_frames - m * video.geometry.chunk)
            x = x[:, :keep]  # [Ch, C', h, w]: the last chunk is trimmed to the requested length
            if latents is not None:
                latents.write(x, conditioning.prompt_of(m))
            rgb = decoder.decode(x)[: video.frames - mp4.frames]  # [f, H, W, 3]
            mp4.write(rgb)
            bar.update(len(rgb))
            if on_frames is not None:
                on_frames(mp4.frames)
        mp4.close()
        if latents is not None:
            latents.close()
    except BaseException:
        mp4.abort()
        if latents is not None:
            latents.abort()
        files.abort()
        raise
    finally:
        bar.close()
    files.commit()
    return GenerationResult(mp4.frames, video.latent_frames, ticks_done, time.perf_counter() - started, out)
