"""A video as it is being made, as fragmented MP4: each frame flushed as a fragment, playable while it grows."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np
import torch

from orchestrator.state.outputs import enlarge


class _Collected(io.RawIOBase):
    """A write-only file that hands what the muxer wrote to whoever drains it."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def drain(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class FragmentedMp4:
    """H.264 in fragmented MP4 (empty moov, a fragment per keyframe, one keyframe a second), encoded
    incrementally with no frame delay (zerolatency)."""

    def __init__(self, fps: float, width: int, height: int):
        self.sink = _Collected()
        self.container = av.open(self.sink, mode="w", format="mp4",
                                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        self.stream = self.container.add_stream("libx264", rate=round(fps),
                                                options={"tune": "zerolatency", "g": str(max(1, round(fps)))})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"

    def add(self, frames: list[np.ndarray]) -> bytes:
        """Encode uint8 [H, W, 3] frames; returns the bytes ready to send."""
        for frame in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self.container.mux(packet)
        return self.sink.drain()

    def add_enlarged(self, frames: list[torch.Tensor], scale: int) -> bytes:
        """Encode uint8 [h, w, 3] frames, each pixel enlarged to a scale x scale block."""
        return self.add([enlarge(frame[None], scale)[0].numpy() for frame in frames])

    def close(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.sink.drain()


def file_frames(path: Path, start: int = 0, batch: int = 64) -> Iterator[list[np.ndarray]]:
    """Frames of an MP4 from index `start` on, as lists of up to `batch` uint8 [H, W, 3] arrays."""
    with av.open(str(path)) as container:
        frames = []
        for index, frame in enumerate(container.decode(video=0)):
            if index >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == batch:
                yield frames
                frames = []
        if frames:
            yield frames


async def encoded_file(encoder: FragmentedMp4, path: Path, start: int = 0) -> AsyncIterator[tuple[int, bytes]]:
    """An MP4's frames from `start` on through `encoder`, decoded and encoded off the event loop; yields
    (frames so far, bytes)."""
    batches, count = file_frames(path, start), 0
    while (frames := await asyncio.to_thread(next, batches, None)) is not None:
        count += len(frames)
        yield count, await asyncio.to_thread(encoder.add, frames)


async def live_video(service, video_id: str, poll: float = 0.2) -> AsyncIterator[bytes]:
    """The video's frames as they are made (an extension: the video it extends first), as fragmented MP4;
    ends when the video completes or fails."""
    record = service.record(video_id)
    width, height = (int(n) for n in record.size.split("x"))
    scale = width // service.config.model.width  # the video's own, even if the service's setting changed since
    encoder = FragmentedMp4(service.config.fps, width, height)
    try:
        before = 0
        if record.extends:
            async for count, data in encoded_file(encoder, service.content(record.extends)):
                before = count
                yield data
        index = 0
        while True:
            frames, done = await service.frames_since(video_id, index)
            if frames:
                yield await asyncio.to_thread(encoder.add_enlarged, [frame for _, frame in frames], scale)
                index = frames[-1][0] + 1
            if done:
                break
            if done is None:
                state = service.status_of(service.record(video_id))[0]
                if state == "completed":  # finished before we caught up: the rest from the file
                    async for _, data in encoded_file(encoder, service.content(video_id), before + index):
                        yield data
                    break
                if state == "failed":
                    break
                await asyncio.sleep(poll)
        yield encoder.close()
    finally:
        encoder.container.close()
