"""Receives clean chunks in order, decodes them into durable segments, joins them at the end, feeds subscribers."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.backends.base import Codec
from orchestrator.core.config import Config, to_yaml, written_frame_size
from orchestrator.core.errors import RunFailed, one_line
from orchestrator.core.prompts import ChunkPrompts
from orchestrator.state import segments
from orchestrator.state.outputs import AtomicFiles, LatentsWriter, Mp4Writer, enlarge
from orchestrator.state.run_state import SinkState


def write_outputs(config: Config, workdir: Path, video_segments: list[Path], latent_segments: list[Path]) -> Path:
    """Join a finished video's segments into the requested outputs (temporary names, renamed on success) and save
    the resolved config beside them. The segments stay until the run is recorded completed (RunFolder.set_status),
    so that a process killed in between leaves a run that resume finishes; if writing fails, the error says how
    to finish the run elsewhere."""
    out = Path(config.output.out)
    files = AtomicFiles()
    try:
        segments.join_mp4(video_segments, files.reserve(out), config.output.crf)
        if config.output.latents_out:
            segments.join_arrow(latent_segments, files.reserve(Path(config.output.latents_out)))
        files.reserve(config_path_for(out)).write_text(to_yaml(config))
        files.commit()
    except Exception as err:
        files.abort()
        frames = segments.covering(workdir, "seg")[0]
        raise RunFailed(f"all {frames} frames are made and kept, but writing {out} failed ({one_line(err)}); "
                        f"finish with: pavdm resume {workdir.parent} --out OTHER.mp4") from err
    except BaseException:
        files.abort()
        raise
    return out


def config_path_for(out: Path) -> Path:
    """Where the resolved config of an output is saved: video.mp4 -> video.config.yaml."""
    return out.with_name(out.stem + ".config.yaml")


@dataclass(frozen=True)
class VideoSize:
    frames: int  # requested video frames
    latent_frames: int  # latent frames that decode to at least `frames`
    chunk: int  # latent frames per chunk


class VideoSink:
    """Decodes and writes a video chunk by chunk into segment files in `workdir`; checkpoint() closes the
    open segments, finish() joins them into the requested outputs, which only then get their final names."""

    def __init__(self, config: Config, codec: Codec, size: VideoSize, prompts: ChunkPrompts, workdir: Path,
                 resume: SinkState | None = None, buffer: int = 512):
        self.config, self.size, self.prompts, self.workdir = config, size, prompts, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        state = resume or SinkState()
        self.video_segments = segments.truncate(workdir, "seg", state.frames)
        self.latent_segments = segments.truncate(workdir, "lat", state.latent_frames if config.output.latents_out
                                                 else 0)
        self.decoder = codec.decoder()
        if resume is not None:
            self.decoder.load_state(state.decoder)
        self.frames, self.latent_frames, self.next_chunk = state.frames, state.latent_frames, state.next_chunk
        self.mp4: Mp4Writer | None = None
        self.latents: LatentsWriter | None = None
        self.segment_start = (self.frames, self.latent_frames)
        self.recent: deque[tuple[int, torch.Tensor]] = deque(maxlen=buffer)  # (frame index, [H, W, 3])
        self.changed = threading.Condition()
        self.done = False

    @property
    def frames_written(self) -> int:
        return self.frames

    def revise(self, config: Config, size: VideoSize, prompts: ChunkPrompts) -> None:
        """The video was steered while it is made (new prompts from a later chunk, or an earlier end): the chunks
        still to come are labelled, trimmed and saved by the new settings."""
        self.config, self.size, self.prompts = config, size, prompts

    def write(self, m: int, latents: torch.Tensor) -> int:
        """Chunk m (must be the next one) [Ch, C, h, w]; returns the frames written so far."""
        if m != self.next_chunk:
            raise ValueError(f"sink expected chunk {self.next_chunk}, got {m}")
        self.next_chunk += 1
        keep = min(self.size.chunk, self.size.latent_frames - m * self.size.chunk)
        latents = latents[:, :keep]  # [Ch, C', h, w]: the last chunk is trimmed to the requested length
        if self.mp4 is None:
            self._open_segments(latents)
        if self.latents is not None:
            self.latents.write(latents, self.prompts.label(m))
        rgb = self.decoder.decode(latents)[: self.size.frames - self.frames]  # [f, H, W, 3]
        self.mp4.write(enlarge(rgb, self.config.output.scale))  # [f, H*scale, W*scale, 3]
        first, self.frames, self.latent_frames = self.frames, self.frames + len(rgb), self.latent_frames + keep
        with self.changed:
            self.recent.extend((first + i, frame) for i, frame in enumerate(rgb))
            self.changed.notify_all()
        return self.frames

    def _open_segments(self, latents: torch.Tensor) -> None:
        self.segment_start = (self.frames, self.latent_frames)
        config = self.config
        self.mp4 = Mp4Writer(self.workdir / segments.open_name("seg", self.frames), config.fps,
                             *written_frame_size(config), config.output.crf)
        if config.output.latents_out:
            frame_shape = (latents.shape[0], *latents.shape[2:])
            self.latents = LatentsWriter(self.workdir / segments.open_name("lat", self.latent_frames), frame_shape,
                                         first_frame=self.latent_frames)

    def _close_segments(self) -> None:
        if self.mp4 is None:
            return
        start, latent_start = self.segment_start
        self.mp4.close()
        segments.close_segment(self.workdir, "seg", start, self.frames)
        self.video_segments.append(self.workdir / segments.segment_name("seg", start, self.frames))
        if self.latents is not None:
            self.latents.close()
            segments.close_segment(self.workdir, "lat", latent_start, self.latent_frames)
            self.latent_segments.append(self.workdir / segments.segment_name("lat", latent_start, self.latent_frames))
        self.mp4 = self.latents = None

    def checkpoint(self) -> SinkState:
        """Make everything written so far durable and return the state a resume starts from."""
        self._close_segments()
        return SinkState(self.frames, self.latent_frames, self.next_chunk, self.decoder.state())

    def frames_since(self, index: int, timeout: float = 0.0) -> tuple[list[tuple[int, torch.Tensor]], bool]:
        """Frames [H, W, 3] (model size, not enlarged) with index >= `index` still in the buffer (waiting up
        to `timeout` for one), and whether the video is complete. A subscriber that fell further behind than the
        buffer sees a gap in indices."""
        with self.changed:
            self.changed.wait_for(lambda: self.done or (self.recent and self.recent[-1][0] >= index), timeout)
            return [(i, f) for i, f in self.recent if i >= index], self.done

    def finish(self) -> Path:
        """Close the segments and join them into the requested outputs (see write_outputs)."""
        self._close_segments()
        out = write_outputs(self.config, self.workdir, self.video_segments, self.latent_segments)
        self._set_done()
        return out

    def abort(self) -> None:
        """Drop the open segments; closed ones stay for a resume. Nothing claims to be a finished video."""
        for writer in (self.mp4, self.latents):
            if writer is not None:
                writer.abort()
        for path in self.workdir.glob("*.partial"):
            path.unlink()
        self.mp4 = self.latents = None
        self._set_done()

    def _set_done(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()
