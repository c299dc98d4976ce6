"""Durable output segments: frames go to numbered segment files closed at every checkpoint, joined at the end."""

from __future__ import annotations

import os
import re
from pathlib import Path

import av
import pyarrow as pa

from orchestrator.errors import UserError

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
    kept = []
    for start, stop, path in closed_segments(folder, kind):
        if stop > end:
            path.unlink()
        else:
            kept.append((start, stop, path))
    covered = 0
    for start, stop, _ in kept:
        if start != covered:
            raise UserError(f"{folder} is missing output frames {covered}..{start - 1}; cannot resume")
        covered = stop
    if covered != end:
        raise UserError(f"{folder} holds frames up to {covered}, the checkpoint expects {end}; cannot resume")
    return [path for _, _, path in kept]


def close_segment(folder: Path, kind: str, start: int, end: int) -> None:
    os.replace(folder / open_name(kind, start), folder / segment_name(kind, start, end))


def join_mp4(segments: list[Path], out: Path) -> None:
    """Concatenate H.264 MP4 segments made with identical settings, without re-encoding."""
    with av.open(str(out), "w", format="mp4") as joined:
        stream, offset = None, 0
        for segment in segments:
            with av.open(str(segment)) as part:
                source = part.streams.video[0]
                if stream is None:
                    stream = joined.add_stream_from_template(source)
                end = offset
                for packet in part.demux(source):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    end = max(end, packet.pts + packet.duration)
                    packet.stream = stream
                    joined.mux(packet)
                offset = end


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
