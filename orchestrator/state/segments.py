"""Durable output segments: frames go to numbered segment files closed at every checkpoint, joined at the end."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import av
import pyarrow as pa
import torch

from orchestrator.core.errors import UserError
from orchestrator.state.outputs import Mp4Writer

CLOSED = re.compile(r"^(?P<kind>seg|lat)-(?P<start>\d{9})-(?P<end>\d{9})\.(?:mp4|arrow)$")


def segment_name(kind: str, start: int, end: int) -> str:
    return f"{kind}-{start:09d}-{end:09d}.{'mp4' if kind == 'seg' else 'arrow'}"


def open_name(kind: str, start: int) -> str:
    """The name of a segment still being written; never mistaken for a closed one."""
    return f"{kind}-{start:09d}.{'mp4' if kind == 'seg' else 'arrow'}.partial"


def closed_segments(folder: Path, kind: str) -> list[tuple[int, int, Path]]:
    """(start, end, path) of closed segments of one kind, in order."""
    found = []
    for path in folder.glob(f"{kind}-*"):
        match = CLOSED.match(path.name)
        if match and match["kind"] == kind:
            found.append((int(match["start"]), int(match["end"]), path))
    return sorted(found)


def truncate(folder: Path, kind: str, end: int) -> list[Path]:
    """Keep exactly the closed segments covering [0, end): delete partial and later ones, check for gaps."""
    for path in folder.glob(f"{kind}-*.partial"):
        path.unlink()
    for _, stop, path in closed_segments(folder, kind):
        if stop > end:
            path.unlink()
    covered, kept = covering(folder, kind)
    if covered != end:
        raise UserError(f"{folder} holds frames 0..{covered - 1} without a gap, the checkpoint expects 0..{end - 1}; "
                        "cannot resume")
    return kept


def covering(folder: Path, kind: str) -> tuple[int, list[Path]]:
    """How far the closed segments of one kind cover the video from its first frame without a gap (the end,
    exclusive), and those segments in order."""
    end, paths = 0, []
    for start, stop, path in closed_segments(folder, kind):
        if start != end:
            break
        end = stop
        paths.append(path)
    return end, paths


def close_segment(folder: Path, kind: str, start: int, end: int) -> None:
    os.replace(folder / open_name(kind, start), folder / segment_name(kind, start, end))


def demux_frames(container: av.container.InputContainer) -> Iterator[av.Packet]:
    """The packets of a container's video stream, without the demuxer's end-of-stream marker."""
    return (packet for packet in container.demux(container.streams.video[0]) if packet.dts is not None)


def display_ranks(segment: Path) -> list[int]:
    """The display position of every frame of an MP4 segment, in decode (packet) order."""
    with av.open(str(segment)) as part:
        shown = [packet.pts for packet in demux_frames(part)]
    rank = {pts: index for index, pts in enumerate(sorted(shown))}
    return [rank[pts] for pts in shown]


def encoder_headers(segment: Path) -> bytes:
    """The H.264 parameter sets of an MP4 segment: what its encoder's settings (crf, preset, size, rate) made of
    the stream's headers, which a decoder needs to read its packets."""
    with av.open(str(segment)) as part:
        return bytes(part.streams.video[0].codec_context.extradata or b"")


def reencode(segment: Path, out: Path, crf: int) -> Path:
    """The segment's frames encoded anew at `crf` with this version's encoder, frame by frame (constant memory)."""
    with av.open(str(segment)) as part:
        source = part.streams.video[0]
        writer = Mp4Writer(out, float(source.guessed_rate), source.codec_context.width, source.codec_context.height,
                           crf)
        for frame in part.decode(source):
            writer.write(torch.from_numpy(frame.to_ndarray(format="rgb24"))[None])  # [1, H, W, 3]
        writer.close()
    return out


def join_mp4(segments: list[Path], out: Path, crf: int) -> None:
    """Concatenate H.264 MP4 segments into one video. The joined stream has one set of headers, the last segment's
    (made at `crf` by this version); a segment encoded with other settings (before a resume that changed
    output.crf, or by an earlier version) could not be decoded under them, so it is re-encoded to match first.
    The others are copied as they are, packet by packet. Frame k of the joined video is shown k frame durations
    in; packets are decoded one frame duration apart and `delay` frames ahead, the deepest reordering of any
    segment, so timestamps increase across segments whatever their B-frames."""
    with tempfile.TemporaryDirectory(prefix="pavdm-join-") as scratch:
        headers = encoder_headers(segments[-1]) if segments else b""
        parts = []
        for i, segment in enumerate(segments):
            if encoder_headers(segment) != headers:
                parts.append(reencode(segment, Path(scratch) / f"{i}.mp4", crf))
                if encoder_headers(parts[-1]) != headers:
                    raise ValueError(f"{segment} cannot be joined to {segments[-1]}: re-encoded at crf {crf} its "
                                     f"H.264 headers still differ from those of the last segment")
            else:
                parts.append(segment)
        copy_packets(parts, out)


def copy_packets(segments: list[Path], out: Path) -> None:
    """join_mp4 of segments with identical headers."""
    ranks = [display_ranks(segment) for segment in segments]
    delay = max((decoded - shown for order in ranks for decoded, shown in enumerate(order)), default=0)
    with av.open(str(out), "w", format="mp4") as joined:
        stream, first = None, 0  # first: the joined index of the segment's first frame
        for segment, order in zip(segments, ranks, strict=True):
            with av.open(str(segment)) as part:
                source = part.streams.video[0]
                if stream is None:
                    stream = joined.add_stream_from_template(source)
                step = round(1 / (source.guessed_rate * source.time_base))  # one frame, in the segment's time base
                for decoded, (packet, shown) in enumerate(zip(demux_frames(part), order, strict=True)):
                    packet.pts, packet.dts = (first + shown) * step, (first + decoded - delay) * step
                    packet.duration, packet.stream = step, stream
                    joined.mux(packet)
            first += len(order)


def join_arrow(segments: list[Path], out: Path) -> None:
    """Concatenate Arrow IPC latents segments into one file."""
    writer = None
    try:
        for segment in segments:
            table = pa.ipc.open_file(str(segment)).read_all()
            if writer is None:
                writer = pa.ipc.new_file(str(out), table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
