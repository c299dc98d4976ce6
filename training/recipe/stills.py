"""Still training batches: short clips (a frame or a few) of independent scenes, each at its own noise level."""

from __future__ import annotations

import numpy as np
import torch

from actors.codecs import from_uint8
from orchestrator.core.schedule import sigma_of
from training.world.scenes import random_scene, render_clip

MOMENTS = 40  # a still starts at one of the first this many frames of its scene's motion (5 s at 8 fps)
MIN_U = 0.02  # the least level position u drawn, so that no still is shown clean (it would teach nothing)


def still_clips(batch: int, max_objects: int, frames: int, size: int, fps: float, rng: np.random.Generator
                ) -> tuple[torch.Tensor, list[str]]:
    """Clean clips [B, 3, F, H, W] in [-1, 1] of `frames` consecutive frames of `batch` random scenes, and their
    captions."""
    scenes = [random_scene(rng, max_objects) for _ in range(batch)]
    clips = []
    for scene in scenes:
        seed = int(rng.integers(2**31))
        moment = int(rng.integers(0, MOMENTS))  # a random moment of its motion
        clips.append(from_uint8(torch.from_numpy(render_clip(scene, seed, frames, size, fps, moment))))  # [3, F, H, W]
    return torch.stack(clips), [scene.caption for scene in scenes]


def still_sigmas(batch: int, frames: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Levels [B, F]: u uniform in [0, 1] for every still on its own (one level over its frames), raised to at
    least MIN_U, then the time shift."""
    u = torch.rand((batch, 1), generator=generator).clamp(MIN_U, 1)  # [B, 1]
    return sigma_of(u, shift).expand(batch, frames)
