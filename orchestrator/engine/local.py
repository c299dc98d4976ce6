"""The in-process executor: the stages and the sink as plain objects in this process, called in turn."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from actors.backends.base import Backend
from actors.backends.factory import build_backend
from actors.sink import Sink
from actors.stage import Stage
from actors.video_sink import VideoSink
from orchestrator.core.config import Config, ModelConfig
from orchestrator.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class WrittenChunk:
    """A chunk as the sink wrote it: its latents (the last chunk trimmed to the video's length) and its decoded
    frames at model size, the first of them frame `first` of the video."""

    stream: str
    chunk: int
    latents: torch.Tensor  # [Ch, c, h, w]
    first: int
    frames: torch.Tensor  # uint8 [f, H, W, 3]


def process_threads(threads: int) -> int:
    """Torch threads in process: pipeline.threads, or 0 = every core this process may run on."""
    return threads or len(os.sched_getaffinity(0))


class ChunkSink(Sink):
    """The sink, keeping every chunk it writes as a WrittenChunk until taken (for callers that read chunks)."""

    def __init__(self):
        super().__init__()
        self.written: list[WrittenChunk] = []

    def write_chunk(self, stream: str, video: VideoSink, m: int, latents: torch.Tensor) -> None:
        first, latent_first = video.frames, video.latent_frames
        super().write_chunk(stream, video, m, latents)
        frames = torch.stack([frame for _, frame in video.frames_since(first)[0]])  # [f, H, W, 3]
        self.written.append(WrittenChunk(stream, m, latents[:, : video.latent_frames - latent_first], first, frames))

    def take(self) -> list[WrittenChunk]:
        """The chunks written since the last take."""
        taken, self.written = self.written, []
        return taken


class InProcessExecutor:
    """P stages (one band each; P > 1 only in halo mode) and a sink, all in this process; every call runs to its
    end before it returns, so a Ref is the value itself. Torch uses pipeline.threads threads (0 = every core)."""

    def __init__(self, config: Config, backend_of: Callable[[ModelConfig], Backend] = build_backend,
                 keep_chunks: bool = False):
        """backend_of loads the model (once, shared by the stages); keep_chunks makes the sink a ChunkSink."""
        cfg = config.pipeline
        torch.set_num_threads(process_threads(cfg.threads))
        try:
            backend = backend_of(config.model)
        except (OSError, ValueError) as err:
            raise UserError(f"the model could not be built: {err}") from None
        self.latent_shape = backend.latent_shape
        self.stages_count = max(cfg.stages, 1)
        self.stages = [Stage(j, config.model, 0, backend) for j in range(self.stages_count)]
        self.sink = ChunkSink() if keep_chunks else Sink()

    def open(self, stream, config, size, prompts, workdir, resume) -> None:
        self.sink.open(stream, config, size, prompts, workdir, resume)

    def revise(self, stream, config, size, prompts) -> None:
        self.sink.revise(stream, config, size, prompts)

    def start(self, stream, seed, geometry, shares) -> list:
        return [stage.start(stream, seed, geometry, share) for stage, share in zip(self.stages, shares, strict=True)]

    def tick(self, plans, peers) -> list[tuple[Any, Any, Any]]:
        return [stage.tick(plan, *sources) for stage, plan, sources in zip(self.stages, plans, peers, strict=True)]

    def write(self, emitted) -> dict[str, int]:
        return self.sink.write(*emitted)

    def save_checkpoint(self, stream, uri, keep, next_tick, meta, published) -> int:
        return self.sink.save_checkpoint(stream, uri, keep, next_tick, meta, *published)

    def finish(self, stream) -> str:
        return self.sink.finish(stream)

    def abort(self, stream, timeout) -> None:
        self.sink.abort(stream)

    def drop(self, stream) -> None:
        for stage in self.stages:
            stage.drop(stream)

    def get(self, refs):
        return refs

    def died(self, err: BaseException) -> bool:
        return False  # nothing here can die apart from this process

    def cause(self, err: Exception) -> Exception:
        return err

    def recent_frames(self, stream, index, timeout):
        return self.sink.frames_since(stream, index, timeout)

    async def frames_since(self, stream, index, timeout):
        return await asyncio.to_thread(self.sink.frames_since, stream, index, timeout)

    def shutdown(self) -> None:
        self.stages.clear()


def run_to_end(steps: Generator[Any, None, T]) -> T:
    """Run a generator to its end; what it returns."""
    try:
        while True:
            next(steps)
    except StopIteration as end:
        return end.value
