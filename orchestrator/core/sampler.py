"""The single-process reference sampler: runs any schedule and partition, yields clean chunks as they finish."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from orchestrator.core.partition import BandView, Partition, band_views
from orchestrator.core.schedule import Geometry, Tick, level_sigmas, ticks
from orchestrator.core.solvers import SOLVER_ORDER, clean_estimate, flow_step, multistep_estimate, posterior_step


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


@dataclass
class Window:
    """Chunks held by a sampler or a stage: latents by chunk id, and each noisy chunk's solver history, the clean
    estimates of its last steps, newest first, made at the levels above its current one (multistep solvers only)."""

    chunks: dict[int, torch.Tensor] = field(default_factory=dict)  # chunk id -> [Ch, C, h, w]
    history: dict[int, torch.Tensor] = field(default_factory=dict)  # chunk id -> [j, Ch, C, h, w]

    def only(self, keep: Collection[int]) -> Window:
        """The chunks in `keep`, with their history (new dicts, the same tensors)."""
        return Window({m: x for m, x in self.chunks.items() if m in keep},
                      {m: x for m, x in self.history.items() if m in keep})

    def copy(self) -> Window:
        """New dicts, the same tensors."""
        return Window(dict(self.chunks), dict(self.history))

    def update(self, other: Window) -> None:
        """Replace the chunks `other` holds, history included (a chunk without history there loses its own)."""
        for m in other.chunks:
            self.history.pop(m, None)
        self.chunks |= other.chunks
        self.history |= other.history

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in [*self.chunks.values(), *self.history.values()])

    @classmethod
    def joined(cls, parts: Iterable[Window]) -> Window:
        """One window from disjoint parts (the stages' shares)."""
        whole = cls()
        for part in parts:
            whole.update(part)
        return whole


@dataclass(frozen=True)
class LevelGrid:
    """How calls move chunks down the levels: the grid's sigmas, the solver, and the eta of the posterior step."""

    sigmas: torch.Tensor  # [S+1] float64
    solver: str = "euler"
    stochasticity: float = 0.0  # eta: 0 = the deterministic step

    @classmethod
    def of(cls, geometry: Geometry) -> LevelGrid:
        return cls(level_sigmas(geometry.steps, geometry.shift), geometry.solver, geometry.stochasticity)

    def step(self, x: torch.Tensor, v: torch.Tensor, sigma: float, own: OwnStep
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk's step to own.sigma_to: (the chunk there, its history after the step: its clean estimates,
        newest first, as many as the solver combines less one; None for Euler and once the chunk is clean).
        Euler without fresh noise is today's flow_step, bit for bit."""
        order = SOLVER_ORDER[self.solver]
        if order == 1 and own.fresh is None:
            return flow_step(x, v, sigma, own.sigma_to), None
        x0 = clean_estimate(x, v, sigma)  # [Ch, C, h, w]
        previous = list(zip(own.history, own.history_sigmas, strict=True)) if own.history is not None else []
        estimate = multistep_estimate(x0, sigma, own.sigma_to, previous, self.stochasticity)
        x_next = posterior_step(x, estimate, sigma, own.sigma_to, self.stochasticity, own.fresh)
        if order == 1 or own.sigma_to == 0:
            return x_next, None
        kept = x0[None] if own.history is None else torch.cat([x0[None], own.history])  # [j, Ch, C, h, w]
        return x_next, kept[: order - 1]


@dataclass(frozen=True)
class OwnStep:
    """A chunk a band's call updates: its slot in the slice, its target sigma, the fresh noise of its step (or
    None), and its history (or None: its first step, or Euler) with the sigmas of the levels it was made at."""

    slot: int
    sigma_to: float
    fresh: torch.Tensor | None
    history: torch.Tensor | None  # [j, Ch, C, h, w], newest first
    history_sigmas: tuple[float, ...] = ()  # sigma of the chunk's levels l + 1, l + 2, ...


def band_inputs(
    tick: Tick, view: BandView, window: Window, noise: NoiseSource, grid: LevelGrid
) -> tuple[list[torch.Tensor], list[float], list[OwnStep]]:
    """What one band's call reads: the slice's chunk tensors and sigmas (oldest first), and a step for every chunk
    it updates. Context at a level > 0 is re-noised with fresh noise; a step draws fresh noise if the grid is
    stochastic and it ends above 0."""
    entries = [(c.chunk, c.level, True) for c in tick.context] + [(u.chunk, u.level_before, False) for u in tick.noisy]
    tensors, levels = [], []
    for chunk, level, is_context in entries[view.start : view.stop]:
        sig = float(grid.sigmas[level])
        x = window.chunks[chunk]
        if is_context and level:
            x = (1 - sig) * x + sig * noise.renoise(tick.index, chunk)
        tensors.append(x)
        levels.append(sig)
    n_context = len(tick.context)
    own = []
    for i in view.own:
        update = tick.noisy[i - n_context]
        fresh = noise.step(tick.index, update.chunk) if grid.stochasticity and update.level_after else None
        history = window.history.get(update.chunk)
        above = update.level_before + 1
        sigmas = () if history is None else tuple(grid.sigmas[above : above + len(history)].tolist())
        own.append(OwnStep(i - view.start, float(grid.sigmas[update.level_after]), fresh, history, sigmas))
    return tensors, levels, own


@dataclass(frozen=True)
class BandCall:
    """One band's share of a model call: its slice (oldest first; empty for an empty band in a joint call), their
    sigmas, the chunks it updates, and the shape of one chunk."""

    chunks: list[torch.Tensor]  # each [Ch, C, h, w]
    sigmas: list[float]
    own: list[OwnStep]
    cond: Any
    chunk_shape: tuple[int, ...]  # [Ch, C, h, w]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.chunks), *self.chunk_shape)

    def latents(self) -> torch.Tensor:
        """The slice as one tensor [Ch, F, h, w] (F = 0 for an empty slice)."""
        if not self.chunks:
            ch, _, h, w = self.chunk_shape
            return torch.empty(ch, 0, h, w)
        return torch.cat(self.chunks, dim=1)


def denoise_batch(velocity: VelocityFn, grid: LevelGrid, calls: list[BandCall], join_conds: Callable[[list], Any]
                  ) -> list[list[tuple[torch.Tensor, Any]]]:
    """One model call over several band slices of one shape (streams batched along B); steps only each slice's own
    chunks. Returns, per call, (updated chunk, its new history or None) in the order of `own`."""
    frames = calls[0].chunk_shape[1]
    x = torch.stack([call.latents() for call in calls])  # [B, Ch, F, h, w]
    sig = torch.tensor([call.sigmas for call in calls], dtype=torch.float32).reshape(len(calls), -1)  # [B, F/C]
    sig = sig.repeat_interleave(frames, dim=1)  # [B, F]
    v = velocity(x, sig, join_conds([call.cond for call in calls]))  # [B, Ch, F, h, w]
    updated = []
    for call, v_call in zip(calls, v, strict=True):
        slots = v_call.split(frames, dim=1)  # F/C x [Ch, C, h, w]
        updated.append([grid.step(call.chunks[own.slot], slots[own.slot], call.sigmas[own.slot], own)
                        for own in call.own])
    return updated


class SharedVelocityFn(Protocol):
    """A joint call's contract: this stage's slice x[B, C, F_j, H, W] and sigma[B, F_j] of a window split among the
    stages as `frames` (latent frames per stage, stage 0 first; at least two hold frames) -> v of this stage's
    slice, computed with the whole window in view; every stage makes the same calls, in the same order."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, frames: tuple[int, ...]) -> torch.Tensor: ...


def denoise_views(
    velocity: VelocityFn, join_conds: Callable[[list], Any], grid: LevelGrid,
    bands: list[tuple[Tick, BandView, Window, NoiseSource, Any]],
    shares: list[tuple[int, ...]] | None = None, shared: SharedVelocityFn | None = None,
) -> list[Window]:
    """Every band's call of one tick, one per (tick, view, window, noise, cond) entry; bands whose slices have the
    same shape share one batched model call. Returns each band's own chunks after the step, with their history.

    Joint calls: with `shares` (one per entry: how its window is split among the stages), the entries split alike
    share one batched call through `shared`, made together with the other stages in sorted order of the split. A
    window that one stage holds alone (fill and drain) is that stage's own call of `velocity` and the others make
    none: no collectives, and exactly one stage's result."""
    calls = [BandCall(*band_inputs(tick, view, window, noise, grid), cond, noise.chunk_shape)
             for tick, view, window, noise, cond in bands]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(call.shape if shares is None else shares[i], []).append(i)
    updated: list[list] = [[] for _ in calls]
    for key in sorted(groups):
        members = groups[key]
        per_chunk = calls[members[0]].chunk_shape[1]
        if shares is None or sum(1 for n in key if n) == 1:  # a window of one stage: its own call
            if not calls[members[0]].chunks:
                continue  # another stage holds the whole window
            call_velocity = velocity
        else:
            call_velocity = functools.partial(shared, frames=tuple(n * per_chunk for n in key))
        for i, steps in zip(members, denoise_batch(call_velocity, grid, [calls[i] for i in members], join_conds),
                            strict=True):
            updated[i] = steps
    results = []
    for (tick, view, *_), steps in zip(bands, updated, strict=True):
        n_context = len(tick.context)
        ids = [tick.noisy[i - n_context].chunk for i in view.own]
        results.append(Window({m: x for m, (x, _) in zip(ids, steps, strict=True)},
                              {m: x0 for m, (_, x0) in zip(ids, steps, strict=True) if x0 is not None}))
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
    resume: tuple[int, Window, int] | None = None,
    on_boundary: Callable[[Tick, Window], None] | None = None,
    on_tick: Callable[[Tick], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (chunk index, clean latents [Ch, C, H, W]) in order; memory holds only the window.

    init_context: clean chunks of an initial clip, oldest first; the last K become the context.
    With a halo partition P > 1, every band calls the model on its own chunks plus its halo, all reading the
    window as it was at the start of the tick, and only its own chunks are updated. A joint partition's call is
    the whole window's, so it samples as plain PA-VDM.
    resume: (next tick, window, number of initial clip chunks) from a checkpoint.
    on_boundary(tick, window) is called after every last tick of a shift, once its finished chunks
    have been yielded; on_tick(tick) at the end of every tick, after on_boundary.
    """
    partition = Partition() if partition is None or partition.joint else partition
    grid = LevelGrid.of(geometry)
    init = list(init_context)
    start, window, init_count = resume if resume else (0, Window({i - len(init): x for i, x in enumerate(init)}),
                                                        len(init))
    for tick in ticks(geometry, num_chunks, init_count):
        if tick.index < start:
            continue
        for m in tick.entering:
            window.chunks[m] = noise.chunk(m)
        cond = cond_at(tick.cond_chunk)
        updated = Window()
        for view in band_views(tick, partition, geometry.noisy):  # every band reads the window as it was
            updated.update(denoise_views(velocity, single_cond, grid, [(tick, view, window, noise, cond)])[0])
        window.update(updated)
        for m in tick.finished:
            yield m, window.chunks[m]
        window = window.only(tick.live_after(geometry.context))  # constant memory in video length
        if tick.boundary and on_boundary is not None:
            on_boundary(tick, window)
        if on_tick is not None:
            on_tick(tick)
