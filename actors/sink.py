"""The sink: receives clean chunks in order, decodes and writes them, and serves frames to subscribers."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from actors.backends.factory import build_codec
from actors.video_sink import VideoSink, VideoSize
from orchestrator.core.config import Config
from orchestrator.core.prompts import ChunkPrompts
from orchestrator.core.sampler import Window
from orchestrator.state.checkpoint import CheckpointStore
from orchestrator.state.run_state import SinkState, write_checkpoint


class Sink:
    """One VideoSink per stream. Plain class: the Ray executor makes it an actor whose writes run in submission
    order while subscribers poll concurrently (SUBSCRIBERS), the in-process executor calls it directly."""

    SUBSCRIBERS = "subscribers"  # the Ray concurrency group of frames_since

    KEEP_FINISHED = 16  # finished streams whose recent frames subscribers may still read

    def __init__(self):
        self.videos: dict[str, VideoSink] = {}
        self.finished: OrderedDict[str, VideoSink] = OrderedDict()
        self.codec_key = None

    def open(self, stream: str, config: Config, size: VideoSize, prompts: ChunkPrompts, workdir: str,
             resume: SinkState | None) -> None:
        """Start (or resume) a stream writing segments into `workdir`; the codec is built once per model."""
        key = repr(config.model)
        if key != self.codec_key:
            self.codec, self.codec_key = build_codec(config.model), key
        self.videos[stream] = VideoSink(config, self.codec, size, prompts, Path(workdir), resume)

    def revise(self, stream: str, config: Config, size: VideoSize, prompts: ChunkPrompts) -> None:
        """New settings of a stream steered while it is made; they apply to the chunks written after this call."""
        self.videos[stream].revise(config, size, prompts)

    def save_checkpoint(self, stream: str, uri: str, keep: int, next_tick: int, meta: dict,
                        *published: dict[str, Window]) -> int:
        """Close the stream's open segments, then write one checkpoint of its window (the stages' published
        chunks, with their solver history) and its sink state. Runs after every write submitted before it; returns
        the frames it covers."""
        window = Window.joined(shares[stream] for shares in published if stream in shares)
        return write_checkpoint(self.videos[stream], CheckpointStore(uri, keep), next_tick, window, meta)

    def write(self, *emitted: dict[str, list[tuple[int, torch.Tensor]]]) -> dict[str, int]:
        """Chunks emitted by one tick, from one or more stages, per stream; returns frames written so far per
        stream that received chunks."""
        written = {}
        for stream in {s for batch in emitted for s, pairs in batch.items() if pairs}:
            video = self.videos[stream]
            for m, latents in sorted((pair for batch in emitted for pair in batch.get(stream, ())),
                                     key=lambda pair: pair[0]):
                self.write_chunk(stream, video, m, latents)
            written[stream] = video.frames_written
        return written

    def write_chunk(self, stream: str, video: VideoSink, m: int, latents: torch.Tensor) -> None:
        video.write(m, latents)

    def finish(self, stream: str) -> str:
        video = self.videos.pop(stream)
        out = str(video.finish())
        self._retire(stream, video)
        return out

    def _retire(self, stream: str, video: VideoSink) -> None:
        self.finished[stream] = video
        while len(self.finished) > self.KEEP_FINISHED:
            self.finished.popitem(last=False)

    def abort(self, stream: str) -> None:
        video = self.videos.pop(stream, None)
        if video is not None:
            video.abort()
            self._retire(stream, video)

    def frames_since(self, stream: str, index: int, timeout: float = 1.0):
        """Frames of a stream with index >= `index` as (index, uint8 [H, W, 3]) pairs, and whether the video
        is done (finished or aborted). A stream the sink does not know (not started yet, or long gone) gives
        ([], None)."""
        video = self.videos.get(stream) or self.finished.get(stream)
        if video is None:
            return [], None
        return video.frames_since(index, timeout)
