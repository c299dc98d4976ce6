"""What a finer patch would cost: the embedded model's sampler with its 4x4 patch against a 2x2 twin.

    python -m benchmarks.patch_cost [--seconds 6] [--threads 2] [--repeats 3]

Both run the tiny model's config (guidance, window, steps) through the reference sampler on the same video;
the twin is the shipped architecture with patch 2x2 (four times the tokens per frame) and random weights,
which cost the same as trained ones. The ratio of the medians scales the demo's minute.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import SkyReelsV2Transformer3DModel

from actors.backends.factory import build_backend
from benchmarks import timing_parser
from orchestrator.core.config import ModelConfig
from orchestrator.state.settings import load_config, resolve_model_path
from training.evaluation.videos import render_frames

PROMPT = "a red circle and a blue square bouncing"
FINER_PATCH = 2


def save_patch_twin(folder: Path, settings: dict, patch: int) -> Path:
    """The transformer of these settings with another spatial patch, randomly initialised."""
    torch.manual_seed(0)
    twin = SkyReelsV2Transformer3DModel.from_config({**settings, "patch_size": (1, patch, patch)})
    twin.save_pretrained(folder / "transformer")
    return folder


def median_seconds(model_path: str, seconds: float, repeats: int) -> float:
    """Median wall time of the whole sampler run (encode, every guided call, decode) after one warm-up."""
    config = load_config(model="tiny", overrides=[f"model.path={model_path}", f"seconds={seconds}",
                                                  f'prompts=["{PROMPT}"]'])
    backend = build_backend(config.model)
    render_frames(config, backend)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_frames(config, backend)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table_row(frame: ModelConfig, patch: int, label: str, seconds: float, shipped: float) -> str:
    """One markdown row: the patch, its tokens per frame, the median seconds and their ratio to the shipped."""
    tokens = (frame.height // patch) * (frame.width // patch)
    return f"| {patch}×{patch}{label} | {tokens} | {seconds:.2f} | {seconds / shipped:.2f} |"


def main() -> None:
    args = timing_parser(__doc__, seconds=6.0, threads=2).parse_args()
    torch.set_num_threads(args.threads)
    settings = SkyReelsV2Transformer3DModel.load_config(resolve_model_path("builtin:tiny"), subfolder="transformer")
    twin = save_patch_twin(Path(tempfile.mkdtemp(prefix="pavdm-patch-twin-")), settings, FINER_PATCH)
    shipped = median_seconds("builtin:tiny", args.seconds, args.repeats)
    finer = median_seconds(str(twin), args.seconds, args.repeats)
    frame = load_config(model="tiny").model
    print(f"{args.seconds:g}-s video, {args.threads} threads, median of {args.repeats} runs")
    print("| patch | tokens per frame | seconds | × shipped |")
    print("|---|---|---|---|")
    print(table_row(frame, settings["patch_size"][-1], " (shipped)", shipped, shipped))
    print(table_row(frame, FINER_PATCH, "", finer, shipped))


if __name__ == "__main__":
    main()
