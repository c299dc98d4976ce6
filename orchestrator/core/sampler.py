"""The single-process reference sampler: runs any schedule and partition, yields clean chunks as they finish."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from orchestrator.core.partition import BandView, Partition, band_views
from orchestrator.core.schedule import Geometry, Tick, level_sigmas, ticks


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
        """Noise that re-noises context chunk m in one tick (replace_noise, schedule.context_level)."""
        return self._draw(1, tick, m)

    def step(self, tick: int, m: int) -> torch.Tensor:
        """Fresh noise of noisy chunk m's step in one tick (schedule.stochasticity)."""
        return self._draw(2, tick, m)


@dataclass(frozen=True)
class LevelGrid:
    """How calls move chunks down the levels: the grid's sigmas and the share of fresh noise in each step."""

    sigmas: torch.Tensor  # [S+1] float64
    stochasticity: float = 0.0  # eta: 0 = the deterministic Euler step

    @classmethod
    def of(cls, geometry: Geometry) -> LevelGrid:
        return cls(level_sigmas(geometry.steps, geometry.shift), geometry.stochasticity)


def flow_step(
    x: torch.Tensor, v: torch.Tensor, sigma_from: float, sigma_to: float,
    fresh: torch.Tensor | None = None, stochasticity: float = 0.0,
) -> torch.Tensor:
    """One step of the rectified flow x = (1 - sigma) x0 + sigma eps along the velocity v ~ eps - x0.

    Without fresh noise the Euler step x + (sigma' - sigma) v. With it, the step lands on the clean estimate
    x0 = x - sigma v re-noised to sigma' with sqrt(1 - eta^2) of the noise estimate eps = x + (1 - sigma) v
    and eta of the fresh noise (DDIM's stochastic family: the noise keeps unit variance)."""
    if fresh is None:
        return x + (sigma_to - sigma_from) * v
    x0 = x - sigma_from * v
    eps = x + (1 - sigma_from) * v
    return (1 - sigma_to) * x0 + sigma_to * (math.sqrt(1 - stochasticity**2) * eps + stochasticity * fresh)


def band_inputs(
    tick: Tick, view: BandView, chunks: Mapping[int, torch.Tensor], noise: NoiseSource, grid: LevelGrid
) -> tuple[list[torch.Tensor], list[float], list[tuple[int, float, torch.Tensor | None]]]:
    """What one band's call reads: the slice's chunk tensors and sigmas (oldest first), and for every chunk
    it updates, (slot in the slice, target sigma, the fresh noise of its step or None). Context at a level
    > 0 is re-noised with fresh noise; a step draws fresh noise if the grid is stochastic and it ends above 0."""
    entries = [(c.chunk, c.level, True) for c in tick.context] + [(u.chunk, u.level_before, False) for u in tick.noisy]
    tensors, levels = [], []
    for chunk, level, is_context in entries[view.start : view.stop]:
        sig = float(grid.sigmas[level])
        x = chunks[chunk]
        if is_context and level:
            x = (1 - sig) * x + sig * noise.renoise(tick.index, chunk)
        tensors.append(x)
        levels.append(sig)
    n_context = len(tick.context)
    own = []
    for i in view.own:
        update = tick.noisy[i - n_context]
        to = float(grid.sigmas[update.level_after])
        fresh = noise.step(tick.index, update.chunk) if grid.stochasticity and update.level_after else None
        own.append((i - view.start, to, fresh))
    return tensors, levels, own


@dataclass(frozen=True)
class BandCall:
    """One band's share of a model call: its slice (oldest first), their sigmas, and the chunks it updates."""

    chunks: list[torch.Tensor]  # each [Ch, C, h, w]
    sigmas: list[float]
    own: list[tuple[int, float, torch.Tensor | None]]  # (slot in the slice, target sigma, fresh noise)
    cond: Any
    stochasticity: float = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.chunks), *self.chunks[0].shape)


def denoise_batch(velocity: VelocityFn, calls: list[BandCall], join_conds: Callable[[list], Any]) -> list[list]:
    """One model call over several band slices of one shape (streams batched along B); Euler-updates only
    each slice's own chunks. Returns, per call, its updated chunks in the order of `own`."""
    frames = calls[0].chunks[0].shape[1]
    x = torch.stack([torch.cat(call.chunks, dim=1) for call in calls])  # [B, Ch, F, h, w]
    sig = torch.tensor([call.sigmas for call in calls], dtype=torch.float32).repeat_interleave(frames, dim=1)  # [B, F]
    v = velocity(x, sig, join_conds([call.cond for call in calls]))  # [B, Ch, F, h, w]
    updated = []
    for call, v_call in zip(calls, v, strict=True):
        slots = v_call.split(frames, dim=1)  # F/C x [Ch, C, h, w]
        updated.append([flow_step(call.chunks[slot], slots[slot], call.sigmas[slot], to, fresh, call.stochasticity)
                        for slot, to, fresh in call.own])
    return updated


def denoise_views(
    velocity: VelocityFn, join_conds: Callable[[list], Any], grid: LevelGrid,
    bands: list[tuple[Tick, BandView, Mapping[int, torch.Tensor], NoiseSource, Any]],
) -> list[dict[int, torch.Tensor]]:
    """Every band's call of one tick, one per (tick, view, chunks, noise, cond) entry; bands whose slices
    have the same shape share one batched model call. Returns each band's own chunks after the step."""
    calls = [BandCall(*band_inputs(tick, view, chunks, noise, grid), cond, grid.stochasticity)
             for tick, view, chunks, noise, cond in bands]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(call.shape, []).append(i)
    updated: list[list] = [[] for _ in calls]
    for members in groups.values():
        for i, chunks in zip(members, denoise_batch(velocity, [calls[i] for i in members], join_conds), strict=True):
            updated[i] = chunks
    results = []
    for (tick, view, *_), chunks in zip(bands, updated, strict=True):
        n_context = len(tick.context)
        results.append({tick.noisy[i - n_context].chunk: x for i, x in zip(view.own, chunks, strict=True)})
    return results


def single_cond(conds: list) -> Any:
    """join_conds for one stream: its conditioning as is."""
    (cond,) = conds
    return cond


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
    on_tick: Callable[[Tick], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (chunk index, clean latents [Ch, C, H, W]) in order; memory holds only the window.

    init_context: clean chunks of an initial clip, oldest first; the last K become the context.
    With partition P > 1, every band calls the model on its own chunks plus its halo, all reading the
    window as it was at the start of the tick, and only its own chunks are updated.
    resume: (next tick, window chunks, number of initial clip chunks) from a checkpoint.
    on_boundary(tick, window) is called after every last tick of a shift, once its finished chunks
    have been yielded; on_tick(tick) at the end of every tick, after on_boundary.
    """
    partition = partition or Partition()
    grid = LevelGrid.of(geometry)
    init = list(init_context)
    start, window, init_count = resume if resume else (0, {i - len(init): x for i, x in enumerate(init)}, len(init))
    for tick in ticks(geometry, num_chunks, init_count):
        if tick.index < start:
            continue
        for m in tick.entering:
            window[m] = noise.chunk(m)
        cond = cond_at(tick.cond_chunk)
        updated = {}
        for view in band_views(tick, partition, geometry.noisy):  # every band reads the window as it was
            updated |= denoise_views(velocity, single_cond, grid, [(tick, view, window, noise, cond)])[0]
        window.update(updated)
        for m in tick.finished:
            yield m, window[m]
        live = tick.live_after(geometry.context)
        window = {m: x for m, x in window.items() if m in live}  # constant memory in video length
        if tick.boundary and on_boundary is not None:
            on_boundary(tick, window)
        if on_tick is not None:
            on_tick(tick)
