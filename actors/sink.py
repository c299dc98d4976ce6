"""The sink actor: receives clean chunks in order, decodes and writes them, and serves frames to subscribers."""

from __future__ import annotations

from pathlib import Path

import ray
import torch

from actors.backends.factory import build_codec
from orchestrator.checkpoint import CheckpointStore
from orchestrator.config import Config
from orchestrator.prompts import ChunkPrompts
from orchestrator.run_state import write_checkpoint
from orchestrator.video_sink import SinkState, VideoSink, VideoSize


@ray.remote(concurrency_groups={"subscribers": 8})
class Sink:
    """Writes run in submission order (default group, one at a time); subscribers poll concurrently."""

    def __init__(self):
        self.video: VideoSink | None = None
        self.codec_key = None

    def open(self, config: Config, size: VideoSize, prompts: ChunkPrompts, workdir: str,
             resume: SinkState | None) -> None:
        """Start (or resume) a video writing segments into `workdir`; the codec is built once per model."""
        key = repr(config.model)
        if key != self.codec_key:
            self.codec, self.codec_key = build_codec(config.model), key
        self.video = VideoSink(config, self.codec, size, prompts, Path(workdir), resume)

    def save_checkpoint(self, uri: str, keep: int, next_tick: int, meta: dict,
                        *published: dict[int, torch.Tensor]) -> int:
        """Close the open segments, then write one checkpoint of the window (the stages' published chunks)
        and this sink's state. Runs after every write submitted before it; returns the frames it covers."""
        window = {m: x for chunks in published for m, x in chunks.items()}
        return write_checkpoint(self.video, CheckpointStore(uri, keep), next_tick, window, meta)

    def write(self, *emitted: list[tuple[int, torch.Tensor]]) -> int:
        """Chunks emitted by one tick, from one or more stages; returns frames written so far."""
        for m, latents in sorted((pair for batch in emitted for pair in batch), key=lambda pair: pair[0]):
            self.video.write(m, latents)
        return self.video.frames_written

    def finish(self) -> str:
        return str(self.video.finish())

    def abort(self) -> None:
        if self.video is not None:
            self.video.abort()

    @ray.method(concurrency_group="subscribers")
    def frames_since(self, index: int, timeout: float = 1.0):
        """Frames with index >= `index` as (index, uint8 [H, W, 3]) pairs, and whether the video is done."""
        if self.video is None:
            return [], False
        return self.video.frames_since(index, timeout)
