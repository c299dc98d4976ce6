"""The in-process executor: the reference sampler feeding a VideoSink in this process, checkpointing at shifts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from actors.backends.base import Backend, PromptEncodings
from actors.video_sink import VideoSink
from orchestrator.core.config import Config
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.engine.plan import Checkpointer, VideoPlan
from orchestrator.state.run_state import StartState, write_checkpoint


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
