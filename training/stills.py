"""Still-frame training batches: single frames of independent scenes, each at its own noise level."""

from __future__ import annotations

import numpy as np
import torch

from actors.codecs import from_uint8
from orchestrator.schedule import sigma_of
from training.world import random_scene, render_clip

MOMENTS = 40  # a still is one of the first this many frames of its scene's motion (5 s at 8 fps)
MIN_U = 0.02  # the least level position u drawn, so that no still is shown clean (it would teach nothing)


def still_clips(batch: int, max_objects: int, size: int, fps: float, rng: np.random.Generator
                ) -> tuple[torch.Tensor, list[str]]:
    """Clean single-frame clips [B, 3, 1, H, W] in [-1, 1] of `batch` random scenes, and their captions."""
    scenes = [random_scene(rng, max_objects) for _ in range(batch)]
    clips = []
    for scene in scenes:
        seed = int(rng.integers(2**31))
        moment = int(rng.integers(0, MOMENTS))  # a random moment of its motion
        clips.append(from_uint8(torch.from_numpy(render_clip(scene, seed, 1, size, fps, moment))))  # [3, 1, H, W]
    return torch.stack(clips), [scene.caption for scene in scenes]


def still_sigmas(batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Levels [B, 1]: u uniform in [0, 1] for every still on its own, raised to at least MIN_U, then the time
    shift."""
    return sigma_of(torch.rand((batch, 1), generator=generator).clamp(MIN_U, 1), shift)
