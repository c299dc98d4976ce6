"""The single-process reference sampler: runs any schedule and partition, yields clean chunks as they finish."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from orchestrator.partition import Partition, band_views
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


def _window_sequence(
    tick: Tick, clean: dict[int, torch.Tensor], noisy: dict[int, torch.Tensor], noise: NoiseSource,
    sigmas: torch.Tensor,
) -> tuple[list[torch.Tensor], list[float]]:
    """Chunk tensors and sigmas of the tick's window, context first; re-noised context for replace_noise."""
    tensors, levels = [], []
    for ctx in tick.context:
        x0 = clean[ctx.chunk]
        if ctx.level:
            sig = float(sigmas[ctx.level])
            x0 = (1 - sig) * x0 + sig * noise.renoise(tick.index, ctx.chunk)
        tensors.append(x0)
        levels.append(float(sigmas[ctx.level]))
    for update in tick.noisy:
        tensors.append(noisy[update.chunk])
        levels.append(float(sigmas[update.level_before]))
    return tensors, levels


def sample(
    velocity: VelocityFn,
    geometry: Geometry,
    num_chunks: int,
    noise: NoiseSource,
    cond_at: Callable[[int], Any],
    init_context: list[torch.Tensor] = (),
    partition: Partition | None = None,
    on_tick: Callable[[Tick], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (chunk index, clean latents [Ch, C, H, W]) in order; memory holds only the window.

    init_context: clean chunks of an initial clip, oldest first; the last K become the context.
    With partition P > 1, every band calls the model on its own chunks plus its halo, all reading the
    window as it was at the start of the tick, and only its own chunks are updated.
    """
    partition = partition or Partition()
    sigmas = level_sigmas(geometry.steps, geometry.shift)  # [S+1] float64
    init = list(init_context)
    clean = {i - len(init): x for i, x in enumerate(init)}  # finished chunks still needed as context
    _forget_old_context(clean, geometry.context)
    noisy: dict[int, torch.Tensor] = {}
    for tick in ticks(geometry, num_chunks, len(init)):
        for m in tick.entering:
            noisy[m] = noise.chunk(m)
        tensors, levels = _window_sequence(tick, clean, noisy, noise, sigmas)
        n_context = len(tick.context)
        cond = cond_at(tick.cond_chunk)
        updated = {}
        for view in band_views(tick, partition, geometry.noisy):
            x = torch.cat(tensors[view.start : view.stop], dim=1)[None]  # [1, Ch, F, H, W]
            sig = torch.tensor(levels[view.start : view.stop], dtype=torch.float32)
            sig = sig.repeat_interleave(geometry.chunk)[None]  # [1, F]
            v = velocity(x, sig, cond)[0].split(geometry.chunk, dim=1)  # F/C x [Ch, C, H, W]
            for i in view.own:
                update = tick.noisy[i - n_context]
                updated[update.chunk] = euler_step(
                    tensors[i], v[i - view.start],
                    float(sigmas[update.level_before]), float(sigmas[update.level_after]),
                )
        noisy.update(updated)
        if on_tick is not None:
            on_tick(tick)
        for m in tick.finished:
            clean[m] = noisy.pop(m)
            yield m, clean[m]
        _forget_old_context(clean, geometry.context)


def _forget_old_context(clean: dict[int, torch.Tensor], keep: int) -> None:
    """Drop finished chunks older than the last K, so memory stays constant in video length."""
    for m in sorted(clean)[: max(0, len(clean) - keep)]:
        del clean[m]
