"""Video frames in the API's output types, and write_video, which writes them with the CLI's MP4 writer."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from PIL import Image

from orchestrator.core.rules import MAX_FPS
from orchestrator.state.outputs import AtomicFiles, Mp4Writer, check_writable
from pavdm.inputs import value_errors

OutputType = Literal["np", "pt", "pil", "latent"]
OUTPUT_TYPES: tuple[str, ...] = get_args(OutputType)
Frames = np.ndarray | torch.Tensor | list[Image.Image]


class VideoChunk(NamedTuple):
    """A finished piece of a video: `start`, the index of its first frame (of its first latent frame for output_type
    'latent'), and its `frames` in the output type asked for."""

    start: int
    frames: Frames


def check_output_type(output_type: object) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")


def as_output(frames: torch.Tensor, output_type: str) -> Frames:
    """uint8 frames [f, H, W, 3] as 'np' (an array of that shape), 'pt' (the tensor) or 'pil' (a list of images)."""
    if output_type == "pt":
        return frames
    array = frames.numpy()
    return array if output_type == "np" else [Image.fromarray(frame) for frame in array]


def joined(parts: list[Any], output_type: str) -> Frames:
    """The pieces of a video in order, as one: frames along their first axis, latents along their frame axis."""
    if output_type == "np":
        return np.concatenate(parts)
    if output_type == "pil":
        return [image for part in parts for image in part]
    return torch.cat(parts, dim=1 if output_type == "latent" else 0)


def rgb_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames [f, H, W, 3] (or one frame [H, W, 3]) as a CPU tensor, checked for the encoder."""
    batch = torch.as_tensor(frames).cpu()
    batch = batch[None] if batch.ndim == 3 else batch
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"write_video takes uint8 RGB frames [F, H, W, 3], got {batch.dtype} of shape "
                         f"{tuple(batch.shape)} (latents are not frames)")
    if batch.shape[1] % 2 or batch.shape[2] % 2:
        raise ValueError(f"H.264 in yuv420p needs an even height and width, got {batch.shape[1]}x{batch.shape[2]}")
    return batch


def frame_batches(source: Any) -> Iterator[torch.Tensor]:
    """uint8 [f, H, W, 3] tensors from frames in any output type, a pipeline output or VideoChunk (their
    `frames`), or an iterable of any of these, read as it comes."""
    source = getattr(source, "frames", source)
    if isinstance(source, np.ndarray | torch.Tensor):
        yield rgb_frames(source)
    elif isinstance(source, Image.Image):
        yield rgb_frames(np.array(source.convert("RGB")))
    elif isinstance(source, Iterable) and not isinstance(source, str | bytes):
        for item in source:
            yield from frame_batches(item)
    else:
        raise ValueError(f"write_video takes frames, a pipeline output or a stream of them, got "
                         f"{type(source).__name__}")


def write_video(frames_or_stream: Any, path: str | os.PathLike[str], fps: float = 8.0, crf: int = 18) -> Path:
    """Write uint8 RGB frames to an H.264 MP4 with the writer of the `pavdm` CLI (PyAV, yuv420p); the file gets
    its name only once it is complete. Returns the path.

    frames_or_stream: frames [F, H, W, 3] as a NumPy array or a tensor, a list of PIL images, the output of a
    pipeline call, or any iterable of these or of VideoChunks, such as `pipe.stream(...)`, which is encoded as it
    is made, in constant memory. fps: frames per second (0 < fps <= 240); crf: x264's quality, 0 (lossless) to 51.

    Example:
        >>> pipe = pavdm.ProgressivePipeline.from_pretrained("tiny")
        >>> pavdm.write_video(pipe.stream("a red circle bouncing", seconds=600), "circle.mp4", fps=8)
        PosixPath('circle.mp4')
    """
    target = Path(path)
    if target.suffix.lower() != ".mp4":
        raise ValueError(f"path '{target}' must end in .mp4: the video is written as H.264 in MP4")
    if not (isinstance(fps, int | float) and math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise ValueError(f"fps must be > 0 and at most {MAX_FPS:g}, got {fps!r}")
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise ValueError(f"crf must be a whole number in 0..51, got {crf!r}")
    with value_errors():
        check_writable(target, "path")
    files, writer = AtomicFiles(), None
    size: tuple[int, ...] = ()  # height and width of the first frame
    try:
        for batch in frame_batches(frames_or_stream):
            if writer is None:
                size = tuple(batch.shape[1:3])
                writer = Mp4Writer(files.reserve(target), fps, size[1], size[0], crf)
            elif tuple(batch.shape[1:3]) != size:
                raise ValueError(f"every frame must have the size of the first, {size[0]}x{size[1]}, got "
                                 f"{batch.shape[1]}x{batch.shape[2]}")
            writer.write(batch)
        if writer is None:
            raise ValueError("write_video got no frames")
        writer.close()
        writer = None
        files.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        files.abort()
        raise
    return target
