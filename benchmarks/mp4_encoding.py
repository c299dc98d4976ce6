"""What writing the MP4 costs: x264's speed presets on the shipped model's video, CPU seconds, size and PSNR.

    python -m benchmarks.mp4_encoding [--seconds 20] [--repeats 3] [--presets medium faster veryfast superfast]

Makes the shipped model's video at its default config (in process, frames as the sink writes them: enlarged by
output.scale), then encodes those frames with each preset at the default crf on one thread, in turns, and prints
per preset the median CPU seconds per 100 frames, the file size and the PSNR of the decoded video against the
frames. The sink encodes on the same cores that the stages compute on.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

import av
import numpy as np
import torch

from orchestrator.core.config import Config
from orchestrator.state.outputs import Mp4Writer
from orchestrator.state.settings import load_config
from pavdm import ProgressivePipeline


def shipped_frames(seconds: float) -> tuple[torch.Tensor, Config]:
    """The shipped model's video at its default config as the sink writes it: [f, H*scale, W*scale, 3] uint8."""
    config = load_config([], [f"seconds={seconds}"], model="tiny")
    pipeline = ProgressivePipeline.from_pretrained("tiny")
    return pipeline(config.prompts, seconds=seconds, output_type="pt", progress=False).frames, config


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def encode(frames: torch.Tensor, config: Config, preset: str, path: Path) -> float:
    """CPU seconds of writing `frames` with this preset (x264 on one thread, so that they are all this process's)."""
    started = cpu_seconds()
    writer = Mp4Writer(path, config.fps, frames.shape[2], frames.shape[1], config.output.crf, preset)
    writer.stream.codec_context.thread_count = 1
    writer.write(frames)
    writer.close()
    return cpu_seconds() - started


def psnr(frames: torch.Tensor, path: Path) -> float:
    """PSNR (dB) of the decoded file against `frames`, over the whole video."""
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # [f, H, W, 3]
    error = np.mean((decoded.astype(np.float64) - frames.numpy().astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=["medium", "faster", "veryfast", "superfast"])
    args = parser.parse_args()
    frames, config = shipped_frames(args.seconds)
    with tempfile.TemporaryDirectory(prefix="pavdm-bench-mp4-") as scratch:
        folder = Path(scratch)
        times: dict[str, list[float]] = {preset: [] for preset in args.presets}
        for _ in range(args.repeats):
            for preset in args.presets:
                times[preset].append(encode(frames, config, preset, folder / f"{preset}.mp4"))
        print(f"{len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}, crf {config.output.crf}, one thread, "
              f"median of {args.repeats}")
        for preset, runs in times.items():
            path = folder / f"{preset}.mp4"
            print(f"  {preset:10s} {100 * statistics.median(runs) / len(frames):5.2f} CPU s per 100 frames  "
                  f"{path.stat().st_size / 1024:6.0f} KiB  PSNR {psnr(frames, path):5.2f} dB")


if __name__ == "__main__":
    main()
