"""The in-process executor: the reference sampler feeding a VideoSink in this process, checkpointing at shifts."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from actors.backends.base import Backend, PromptEncodings
from actors.video_sink import VideoSink
from orchestrator.core.config import Config
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.core.schedule import Tick
from orchestrator.engine.plan import Checkpointer, VideoPlan
from orchestrator.state.run_state import StartState, write_checkpoint

T = TypeVar("T")


@dataclass(frozen=True)
class WrittenChunk:
    """A chunk as the sink wrote it: its latents (the last chunk trimmed to the video's length) and its decoded
    frames at model size, the first of them frame `first` of the video."""

    chunk: int
    latents: torch.Tensor  # [Ch, c, h, w]
    first: int
    frames: torch.Tensor  # uint8 [f, H, W, 3]


def local_video(config: Config, plan: VideoPlan, backend: Backend, start: StartState, checkpointer: Checkpointer,
                on_frames: Callable[[int], None] = lambda frames: None, on_tick: Callable[[Tick], None] | None = None
                ) -> Generator[WrittenChunk, None, Path]:
    """The in-process reference sampler feeding a VideoSink, checkpointing at shift boundaries. Yields every chunk
    once written (on_frames hears the frames written so far first) and returns the finished video's path; on_tick
    is the sampler's hook after every tick. An error, or closing the generator, drops the open segments."""
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
                        on_boundary=on_boundary, on_tick=on_tick)
        for m, x in chunks:
            first, latent_first = sink.frames, sink.latent_frames
            on_frames(sink.write(m, x))
            frames = torch.stack([frame for _, frame in sink.frames_since(first)[0]])  # [f, H, W, 3]
            yield WrittenChunk(m, x[:, : sink.latent_frames - latent_first], first, frames)
        return sink.finish()
    except BaseException:
        sink.abort()
        raise


def run_local(config: Config, plan: VideoPlan, backend: Backend, start: StartState, checkpointer: Checkpointer,
              on_frames: Callable[[int], None]) -> Path:
    """local_video to its end: the finished video's path."""
    return run_to_end(local_video(config, plan, backend, start, checkpointer, on_frames))


def run_to_end(steps: Generator[Any, None, T]) -> T:
    """Run a generator to its end; what it returns."""
    try:
        while True:
            next(steps)
    except StopIteration as end:
        return end.value
