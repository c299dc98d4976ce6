"""Stills from a caption alone: one frame (or chunk) per seed sampled without context, scored by the probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actors.backends.base import Backend
from actors.backends.factory import build_backend
from orchestrator.core.sampler import NoiseSource, flow_step
from orchestrator.core.schedule import level_sigmas
from orchestrator.state.settings import load_config
from training.evaluation.videos import framed_row, save_enlarged, world_scenes
from training.world.probe import score_segment

STILL_PROMPTS = (  # one object each: every shape word in two or three colours
    "a red circle bouncing", "a blue square bouncing", "a green triangle bouncing", "a yellow circle bouncing",
    "a magenta square bouncing", "a cyan triangle bouncing", "a white square bouncing", "a red triangle bouncing",
)


def sample_stills(backend: Backend, prompt: str, seeds: list[int], steps: int, shift: float, frames: int = 1
                  ) -> np.ndarray:
    """`frames` frames per seed drawn together at one level from `prompt` alone (no context, Euler steps down the
    level grid): [K, F, H, W, 3] uint8.

    Seed s's noise is the first frames of chunk 0 of a video with seed s whose chunks have F frames."""
    shape = (backend.latent_shape[0], frames, *backend.latent_shape[1:])  # [C, F, h, w]
    x = torch.stack([NoiseSource(seed, shape).chunk(0) for seed in seeds])  # [K, C, F, h, w]
    cond = backend.join_conds([backend.encode_prompt(prompt)] * len(seeds))
    sigmas = level_sigmas(steps, shift).tolist()[::-1]  # 1 ... 0
    with torch.no_grad():
        for high, low in zip(sigmas, sigmas[1:], strict=False):
            v = backend.velocity(x, torch.full((len(seeds), frames), high), cond)  # [K, C, F, h, w]
            x = flow_step(x, v, high, low)
    return np.stack([backend.codec.decoder().decode(still).numpy() for still in x])  # [K, F, H, W, 3]


def evaluate_stills(model: str, seeds: list[int], prompts: list[str], out_dir: Path, overrides: list[str] = (),
                    frames: int = 1, progress: bool = True) -> dict[str, float]:
    """Presence per prompt over its stills (every frame of each), at the model's sampling steps and shift; writes
    stills.json and stills.png (a row per prompt, each still's first frame)."""
    scenes = world_scenes(prompts)
    config = load_config([], list(overrides), model=model)
    backend = build_backend(config.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    presence, rows = {}, []
    for prompt in tqdm(prompts, desc="stills", disable=not progress):
        stills = sample_stills(backend, prompt, seeds, config.schedule.steps, config.schedule.shift, frames)
        presence[prompt] = score_segment(stills.reshape(-1, *stills.shape[2:]), scenes[prompt])[0]["presence"]
        rows.append(stills[:, 0])
    presence["mean"] = float(np.mean([presence[p] for p in prompts]))
    (out_dir / "stills.json").write_text(json.dumps({"seeds": seeds, "frames": frames, "presence": presence}, indent=1))
    save_enlarged(np.concatenate([framed_row(row) for row in rows]), out_dir / "stills.png")  # a row per prompt
    return presence
