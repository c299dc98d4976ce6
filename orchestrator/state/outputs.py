"""Output files written as chunks finish: H.264 MP4 (PyAV), Arrow IPC latents, all renamed into place on success."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import torch

from orchestrator.core.errors import UserError
from orchestrator.state.atomic import partial_path


def check_writable(path: Path, what: str) -> None:
    """Fail early, naming the flag, if `path` cannot be created: by creating (and removing) a file beside it,
    since permission bits do not tell (root, read-only mounts, /proc)."""
    if path.is_dir():
        raise UserError(f"{what} '{path}' is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} '{path}': folder '{folder}' does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pavdm-probe-"):
            pass
    except OSError as err:
        raise UserError(f"{what} '{path}': cannot write in folder '{folder}' ({err.strerror})") from None


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through links), whether or not it exists yet."""
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def enlarge(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """[f, H, W, 3] -> [f, H*scale, W*scale, 3]: every pixel becomes a scale x scale block."""
    if scale == 1:
        return frames
    return frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


# x264's speed preset: the sink encodes on the cores the stages compute on, and at the same crf `veryfast` takes
# less than half the CPU of x264's default (`medium`) for 0.3 dB of PSNR (of 42) and the same file size on the
# shipped model's video (BENCHMARKS.md, "Writing the MP4").
X264_PRESET = "veryfast"


class Mp4Writer:
    """Appends uint8 RGB frames [f, H, W, 3] to an H.264 MP4 (yuv420p)."""

    def __init__(self, path: Path, fps: float, width: int, height: int, crf: int = 18, preset: str = X264_PRESET):
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": preset}
        self.frames = 0

    def write(self, frames: torch.Tensor) -> None:
        for frame in frames.numpy():
            packet_source = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            self.container.mux(self.stream.encode(packet_source))
            self.frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()

    def abort(self) -> None:
        self.container.close()


def latents_schema(shape: tuple[int, ...]) -> pa.Schema:
    """One row per latent frame: index, prompt, tensor [Ch, h, w]."""
    return pa.schema(
        [("frame", pa.int64()), ("prompt", pa.string()), ("latent", pa.fixed_shape_tensor(pa.float32(), shape))]
    )


class LatentsWriter:
    """Appends latent chunks [Ch, C, h, w] to an Arrow IPC file, one row per latent frame."""

    def __init__(self, path: Path, frame_shape: tuple[int, int, int], first_frame: int = 0):
        self.schema = latents_schema(frame_shape)
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_file(self.sink, self.schema)
        self.frames = first_frame  # index of the next latent frame

    def write(self, latents: torch.Tensor, prompt: str) -> None:
        per_frame = latents.permute(1, 0, 2, 3).contiguous().numpy()  # [C, Ch, h, w]
        count = per_frame.shape[0]
        tensor_type = self.schema.field("latent").type
        batch = pa.record_batch(
            [
                pa.array(np.arange(self.frames, self.frames + count), pa.int64()),
                pa.array([prompt] * count, pa.string()),
                pa.ExtensionArray.from_storage(
                    tensor_type, pa.FixedSizeListArray.from_arrays(per_frame.reshape(-1), per_frame[0].size)
                ),
            ],
            schema=self.schema,
        )
        self.writer.write_batch(batch)
        self.frames += count

    def close(self) -> None:
        self.writer.close()
        self.sink.close()

    abort = close


def read_latents(path: str | Path) -> torch.Tensor:
    """All latent frames of an Arrow latents file: [Ch, F, h, w] float32."""
    try:
        table = pa.ipc.open_file(str(path)).read_all()
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"cannot read latents file '{path}': {err}") from None
    if "latent" not in table.column_names or table.num_rows == 0:
        raise UserError(f"latents file '{path}' has no latent frames")
    frames = table.column("latent").combine_chunks().to_numpy_ndarray()  # [F, Ch, h, w]
    return torch.from_numpy(frames.copy()).permute(1, 0, 2, 3).contiguous()


class AtomicFiles:
    """Files written under temporary names and renamed into place only by commit(); abort removes them."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def reserve(self, final: Path) -> Path:
        temp = partial_path(final)
        self.pending.append((temp, final))
        return temp

    def commit(self) -> None:
        for temp, final in self.pending:
            os.replace(temp, final)
        self.pending = []

    def abort(self) -> None:
        for temp, _ in self.pending:
            temp.unlink(missing_ok=True)
        self.pending = []
