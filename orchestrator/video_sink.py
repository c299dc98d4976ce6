"""Receives clean chunks in order, decodes them, writes MP4 and Arrow latents, and buffers frames for subscribers."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.backends.base import Codec
from orchestrator.config import Config, to_yaml
from orchestrator.outputs import AtomicFiles, LatentsWriter, Mp4Writer
from orchestrator.prompts import ChunkPrompts


def config_path_for(out: Path) -> Path:
    """Where the resolved config of an output is saved: video.mp4 -> video.config.yaml."""
    return out.with_name(out.stem + ".config.yaml")


@dataclass(frozen=True)
class VideoSize:
    frames: int  # requested video frames
    latent_frames: int  # latent frames that decode to at least `frames`
    chunk: int  # latent frames per chunk


class VideoSink:
    """Decodes and writes a video chunk by chunk; files get their final names only in finish()."""

    def __init__(self, config: Config, codec: Codec, size: VideoSize, prompts: ChunkPrompts, buffer: int = 512):
        self.size, self.prompts = size, prompts
        self.decoder = codec.decoder()
        self.next_chunk = 0
        self.files = AtomicFiles()
        self.out = out = Path(config.output.out)
        self.files.reserve(config_path_for(out)).write_text(to_yaml(config))
        self.mp4 = Mp4Writer(self.files.reserve(out), config.fps, config.model.width, config.model.height,
                             config.output.crf)
        self.latents_path = self.files.reserve(Path(config.output.latents_out)) if config.output.latents_out else None
        self.latents: LatentsWriter | None = None
        self.recent: deque[tuple[int, torch.Tensor]] = deque(maxlen=buffer)  # (frame index, [H, W, 3])
        self.changed = threading.Condition()
        self.done = False

    @property
    def frames_written(self) -> int:
        return self.mp4.frames

    def write(self, m: int, latents: torch.Tensor) -> int:
        """Chunk m (must be the next one) [Ch, C, h, w]; returns the frames written so far."""
        if m != self.next_chunk:
            raise ValueError(f"sink expected chunk {self.next_chunk}, got {m}")
        self.next_chunk += 1
        keep = min(self.size.chunk, self.size.latent_frames - m * self.size.chunk)
        latents = latents[:, :keep]  # [Ch, C', h, w]: the last chunk is trimmed to the requested length
        if self.latents_path is not None:
            if self.latents is None:
                self.latents = LatentsWriter(self.latents_path, (latents.shape[0], *latents.shape[2:]))
            self.latents.write(latents, self.prompts.of(m))
        rgb = self.decoder.decode(latents)[: self.size.frames - self.mp4.frames]  # [f, H, W, 3]
        first = self.mp4.frames
        self.mp4.write(rgb)
        with self.changed:
            self.recent.extend((first + i, frame) for i, frame in enumerate(rgb))
            self.changed.notify_all()
        return self.mp4.frames

    def frames_since(self, index: int, timeout: float = 0.0) -> tuple[list[tuple[int, torch.Tensor]], bool]:
        """Frames with index >= `index` still in the buffer (waiting up to `timeout` for one), and whether
        the video is complete. A subscriber that fell further behind than the buffer sees a gap in indices."""
        with self.changed:
            self.changed.wait_for(lambda: self.done or (self.recent and self.recent[-1][0] >= index), timeout)
            return [(i, f) for i, f in self.recent if i >= index], self.done

    def finish(self) -> Path:
        """Close the files and move them into place; the video is complete."""
        self.mp4.close()
        if self.latents is not None:
            self.latents.close()
        self.files.commit()
        with self.changed:
            self.done = True
            self.changed.notify_all()
        return self.out

    def abort(self) -> None:
        """Remove every partial file; nothing claims to be a finished video."""
        self.mp4.abort()
        if self.latents is not None:
            self.latents.abort()
        self.files.abort()
        with self.changed:
            self.done = True
            self.changed.notify_all()
