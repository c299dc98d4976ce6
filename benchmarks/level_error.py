"""Denoising error per noise level of models in one run: one call on ground-truth world windows, clean context.

    python -m benchmarks.level_error /path/to/old-model models/tiny --clips 16

prints a table of the error per level for every model and, with two or more, the last one's over the first's.

For every window level l = 1..S the mean squared error of the model's clean estimate x0 = x - sigma v against the
true frames, at the levels the progressive schedule of `configs/model/tiny.yaml` shows them (every substep k).
It isolates the one-step denoiser from the long video's own errors: a model can win here and still hold objects
worse over a minute (EVALUATION.md). The model is called unguided (the text-conditioned branch alone), whatever
guidance the config samples with: the error of the denoiser itself.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from actors.backends.factory import build_backend
from orchestrator.core.schedule import Geometry, Tick, level_sigmas, ticks
from orchestrator.state.settings import load_config
from training.recipe.windows import noisy_inputs
from training.world.scenes import World, random_scene


def full_window_levels(geometry: Geometry) -> list[list[int]]:
    """Per substep, the level of every frame of a full window (context, then noisy chunks, oldest first): the
    ticks of a video continued from a clip while its window holds all N noisy chunks."""
    def frame_levels(tick: Tick) -> list[int]:
        chunks = [c.level for c in tick.context] + [u.level_before for u in tick.noisy]
        return [level for level in chunks for _ in range(geometry.chunk)]

    return [frame_levels(t) for t in ticks(geometry, geometry.noisy, init_chunks=geometry.context)
            if len(t.noisy) == geometry.noisy]


def level_errors(model_path: str, clips: int, seed: int) -> dict[int, float]:
    """Level -> mean squared x0 error over `clips` random scenes, each seen at every substep."""
    config = load_config([], [f"model.path={model_path}", "model.guidance_scale=1"], model="tiny")
    backend = build_backend(config.model)
    geometry = Geometry.from_config(config.schedule)
    sigmas = level_sigmas(geometry.steps, geometry.shift)  # [S+1]
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    errors: dict[int, list[float]] = {}
    windows = full_window_levels(geometry)
    frames = (geometry.context + geometry.noisy) * geometry.chunk
    for _ in range(clips):
        scene = random_scene(rng)
        world = World(scene, int(rng.integers(2**31)), config.model.height, config.fps)
        clean = backend.codec.encode(torch.from_numpy(world.frames(frames)))[None]  # [1, Ch, F, h, w]
        cond = backend.encode_prompt(scene.caption)
        for levels in windows:
            sigma = sigmas[levels].float()[None]  # [1, F]
            x, _ = noisy_inputs(clean, sigma, generator)  # [1, Ch, F, h, w]
            estimate = x - sigma[:, None, :, None, None] * backend.velocity(x, sigma, cond)  # [1, Ch, F, h, w]
            per_frame = ((estimate - clean) ** 2).mean(dim=(0, 1, 3, 4))  # [F]
            for level, error in zip(levels, per_frame.tolist(), strict=True):
                if level:
                    errors.setdefault(level, []).append(error)
    return {level: float(np.mean(values)) for level, values in sorted(errors.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="diffusers model folders laid out like models/tiny")
    parser.add_argument("--clips", type=int, default=16, help="random scenes per model (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of scenes and noise, the same for every model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = {path: level_errors(path, args.clips, args.seed) for path in args.models}
    levels = list(next(iter(table.values())))
    first, last = args.models[0], args.models[-1]
    ratio = len(args.models) > 1  # the last model's error over the first's, level by level
    print("| level | " + " | ".join(args.models) + (f" | {last} / {first} |" if ratio else " |"))
    print("|---" * (len(args.models) + 1 + ratio) + "|")
    for level in levels:
        cells = [f"{table[path][level]:.5f}" for path in args.models]
        if ratio:
            cells.append(f"{table[last][level] / table[first][level]:.2f}")
        print(f"| {level} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
