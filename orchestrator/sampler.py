"""The single-process reference sampler: runs any schedule and partition, yields clean chunks as they finish."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch

from orchestrator.partition import BandView, Partition, band_views
from orchestrator.schedule import Geometry, Tick, level_sigmas, ticks


class VelocityFn(Protocol):
    """The one model contract: v = velocity(x[B, C, F, H, W], sigma[B, F], cond), v ~ eps - x0."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor: ...


class NoiseSource:
    """All randomness of a video: chunk m's noise comes from a generator seeded by (seed, m) only."""

    def __init__(self, seed: int, chunk_shape: tuple[int, ...]):
        self.seed = seed
        self.chunk_shape = chunk_shape  # [Ch, C, H, W]

    def _draw(self, *key: int) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed % 2**63, *(k % 2**63 for k in key)]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randn(self.chunk_shape, generator=generator, dtype=torch.float32)  # [Ch, C, H, W]

    def chunk(self, m: int) -> torch.Tensor:
        """The fresh noise of chunk m."""
        return self._draw(0, m)

    def renoise(self, tick: int, m: int) -> torch.Tensor:
        """Noise that re-noises context chunk m in one tick (replace_noise only)."""
        return self._draw(1, tick, m)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """x <- x + (sigma' - sigma) * v, the Euler step of the rectified-flow ODE."""
    return x + (sigma_to - sigma_from) * v


def band_inputs(
    tick: Tick, view: BandView, chunks: Mapping[int, torch.Tensor], noise: NoiseSource, sigmas: torch.Tensor
) -> tuple[list[torch.Tensor], list[float], list[tuple[int, float]]]:
    """What one band's call reads: the slice's chunk tensors and sigmas (oldest first), and for every chunk
    it updates, (slot in the slice, target sigma). Context at a level > 0 is re-noised (replace_noise)."""
    entries = [(c.chunk, c.level, True) for c in tick.context] + [(u.chunk, u.level_before, False) for u in tick.noisy]
    tensors, levels = [], []
    for chunk, level, is_context in entries[view.start : view.stop]:
        sig = float(sigmas[level])
        x = chunks[chunk]
        if is_context and level:
            x = (1 - sig) * x + sig * noise.renoise(tick.index, chunk)
        tensors.append(x)
        levels.append(sig)
    n_context = len(tick.context)
    own = [(i - view.start, float(sigmas[tick.noisy[i - n_context].level_after])) for i in view.own]
    return tensors, levels, own


def denoise_band(
    velocity: VelocityFn, chunks: list[torch.Tensor], sigmas: list[float], own: list[tuple[int, float]], cond: Any
) -> list[torch.Tensor]:
    """One model call on a band's slice (each chunk [Ch, C, h, w]); Euler-updates only the band's own chunks."""
    frames = chunks[0].shape[1]
    x = torch.cat(chunks, dim=1)[None]  # [1, Ch, F, h, w]
    sig = torch.tensor(sigmas, dtype=torch.float32).repeat_interleave(frames)[None]  # [1, F]
    v = velocity(x, sig, cond)[0].split(frames, dim=1)  # F/C x [Ch, C, h, w]
    return [euler_step(chunks[slot], v[slot], sigmas[slot], target) for slot, target in own]


def denoise_view(
    velocity: VelocityFn, tick: Tick, view: BandView, chunks: Mapping[int, torch.Tensor], noise: NoiseSource,
    sigmas: torch.Tensor, cond: Any,
) -> dict[int, torch.Tensor]:
    """One band's call in one tick: its own chunks after the Euler step, by chunk id."""
    updated = denoise_band(velocity, *band_inputs(tick, view, chunks, noise, sigmas), cond)
    n_context = len(tick.context)
    return {tick.noisy[i - n_context].chunk: x for i, x in zip(view.own, updated, strict=True)}


def sample(
    velocity: VelocityFn,
    geometry: Geometry,
    num_chunks: int,
    noise: NoiseSource,
    cond_at: Callable[[int], Any],
    init_context: list[torch.Tensor] = (),
    partition: Partition | None = None,
    resume: tuple[int, dict[int, torch.Tensor], int] | None = None,
    on_boundary: Callable[[Tick, dict[int, torch.Tensor]], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (chunk index, clean latents [Ch, C, H, W]) in order; memory holds only the window.

    init_context: clean chunks of an initial clip, oldest first; the last K become the context.
    With partition P > 1, every band calls the model on its own chunks plus its halo, all reading the
    window as it was at the start of the tick, and only its own chunks are updated.
    resume: (next tick, window chunks, number of initial clip chunks) from a checkpoint.
    on_boundary(tick, window) is called after every last tick of a shift, once its finished chunks
    have been yielded.
    """
    partition = partition or Partition()
    sigmas = level_sigmas(geometry.steps, geometry.shift)  # [S+1] float64
    init = list(init_context)
    start, window, init_count = resume if resume else (0, {i - len(init): x for i, x in enumerate(init)}, len(init))
    for tick in ticks(geometry, num_chunks, init_count):
        if tick.index < start:
            continue
        for m in tick.entering:
            window[m] = noise.chunk(m)
        cond = cond_at(tick.cond_chunk)
        updated = {}
        for view in band_views(tick, partition, geometry.noisy):
            updated |= denoise_view(velocity, tick, view, window, noise, sigmas, cond)
        window.update(updated)
        for m in tick.finished:
            yield m, window[m]
        live = tick.live_after(geometry.context)
        window = {m: x for m, x in window.items() if m in live}  # constant memory in video length
        if tick.boundary and on_boundary is not None:
            on_boundary(tick, window)
