"""Level bookkeeping: for every model call (tick), which chunks sit in the window and at which levels."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from orchestrator.core.config import ScheduleConfig


@dataclass(frozen=True)
class Geometry:
    """The effective window shape of a schedule (docs/design.md §1 symbols)."""

    kind: str
    chunk: int  # C: latent frames per chunk
    noisy: int  # N: noisy chunks in the window
    steps: int  # S: updates every chunk receives
    context: int  # K: finished context chunks at the window front
    shift: float  # r: time shift of the level grid
    context_level: int = 0  # level the context is shown at (re-noised every call); 0 = clean
    stochasticity: float = 0.0  # eta of the posterior step; 0 = the deterministic step
    solver: str = "euler"  # ScheduleConfig.solver: euler, dpmpp_2m or dpmpp_3m

    @property
    def substeps(self) -> int:
        """s = S / N: model calls per shift (progressive kinds)."""
        return self.steps // self.noisy

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> Geometry:
        """fifo is progressive with one-frame chunks and one step per shift: C = 1, N = S."""
        chunk, noisy = (1, cfg.steps) if cfg.kind == "fifo" else (cfg.chunk, cfg.noisy_chunks)
        return cls(cfg.kind, chunk, noisy, cfg.steps, cfg.context_chunks, cfg.shift, cfg.context_level,
                   cfg.stochasticity, cfg.solver)


def sigma_of(u: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Time-shifted noise level sigma(u) = r*u / (1 + (r - 1)*u) for u in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def level_sigmas(steps: int, shift: float) -> torch.Tensor:
    """sigma_l for l = 0..S on the grid u = l/S, float64 so every consumer rounds the same way."""
    u = torch.arange(steps + 1, dtype=torch.float64) / steps  # [S+1]
    return sigma_of(u, shift)


@dataclass(frozen=True)
class ChunkUpdate:
    """A noisy chunk that one call moves from level_before to level_after."""

    chunk: int
    position: int  # 0 = oldest noisy slot of the window
    level_before: int
    level_after: int


@dataclass(frozen=True)
class ContextChunk:
    """A finished chunk shown to the model but never updated; level > 0 means it is re-noised every call
    (replace_noise, or schedule.context_level)."""

    chunk: int  # negative ids are chunks of the initial clip, -1 being its last
    level: int


@dataclass(frozen=True)
class Tick:
    """One model call over the whole window (one substep)."""

    index: int
    shift: int  # shift (progressive) or block (chunked kinds) this tick belongs to
    substep: int
    context: tuple[ContextChunk, ...]  # oldest first
    noisy: tuple[ChunkUpdate, ...]  # oldest first
    entering: tuple[int, ...]  # chunks whose fresh noise enters the window before this tick
    finished: tuple[int, ...]  # chunks that are clean after this tick, in order
    cond_chunk: int  # the newest chunk that has entered: its prompt conditions this tick
    boundary: bool  # the last tick of its shift (or block): a consistent point for checkpoints

    def context_after(self, keep: int) -> list[int]:
        """The context of the next tick: the last K of this tick's context and finished chunks."""
        return ([c.chunk for c in self.context] + list(self.finished))[-keep:] if keep else []

    def live_after(self, keep: int) -> set[int]:
        """Chunks still needed after this tick: the next context and the unfinished noisy chunks."""
        return set(self.context_after(keep)) | {u.chunk for u in self.noisy if u.chunk not in self.finished}


def chunks_for_frames(latent_frames: int, geometry: Geometry) -> int:
    """M: chunks needed for a number of latent frames (the last chunk is trimmed on output)."""
    return math.ceil(latent_frames / geometry.chunk)


def initial_context(geometry: Geometry, init_chunks: int) -> list[int]:
    """Ids of the context at the start: the last K chunks of an initial clip (-1 is its last chunk)."""
    take = min(geometry.context, init_chunks)
    return list(range(-take, 0))


def ticks(geometry: Geometry, num_chunks: int, init_chunks: int = 0) -> Iterator[Tick]:
    """All ticks of a video of `num_chunks` chunks, fill and drain included."""
    if num_chunks < 1:
        raise ValueError("a video needs at least one chunk")
    if geometry.kind in ("progressive", "fifo"):
        return _progressive_ticks(geometry, num_chunks, init_chunks)
    return _block_ticks(geometry, num_chunks, init_chunks)


def _progressive_ticks(g: Geometry, num_chunks: int, init_chunks: int) -> Iterator[Tick]:
    """PA-VDM: at substep k the chunk at position p sits at l = s*(p+1) - k and moves to l - 1."""
    s, n = g.substeps, g.noisy
    context = initial_context(g, init_chunks)
    index = 0
    for shift in range(num_chunks + n - 1):
        present = range(max(0, shift - n + 1), min(shift, num_chunks - 1) + 1)  # oldest first
        done = (present[0],) if present[0] == shift - n + 1 else ()
        for k in range(s):
            noisy = tuple(
                ChunkUpdate(m, p, s * (p + 1) - k, s * (p + 1) - k - 1)
                for m in present
                for p in [n - 1 - (shift - m)]
            )
            yield Tick(
                index=index,
                shift=shift,
                substep=k,
                context=tuple(ContextChunk(c, g.context_level) for c in context),
                noisy=noisy,
                entering=(shift,) if k == 0 and shift < num_chunks else (),
                finished=done if k == s - 1 else (),
                cond_chunk=present[-1],
                boundary=k == s - 1,
            )
            index += 1
        context = (context + list(done))[-g.context :] if g.context else []


def _block_ticks(g: Geometry, num_chunks: int, init_chunks: int) -> Iterator[Tick]:
    """Chunked extension: N new chunks at one level go S -> 0 beside K context chunks, then the next N.

    The context is clean (chunked) or re-noised to the new chunks' level every call (replace_noise).
    """
    context = initial_context(g, init_chunks)
    index = 0
    for block, start in enumerate(range(0, num_chunks, g.noisy)):
        members = tuple(range(start, min(start + g.noisy, num_chunks)))
        for i in range(g.steps):
            level = g.steps - i
            context_level = level if g.kind == "replace_noise" else g.context_level
            yield Tick(
                index=index,
                shift=block,
                substep=i,
                context=tuple(ContextChunk(c, context_level) for c in context),
                noisy=tuple(ChunkUpdate(m, m - start, level, level - 1) for m in members),
                entering=members if i == 0 else (),
                finished=members if i == g.steps - 1 else (),
                cond_chunk=members[-1],
                boundary=i == g.steps - 1,
            )
            index += 1
        context = (context + list(members))[-g.context :] if g.context else []


def total_ticks(geometry: Geometry, num_chunks: int) -> int:
    """Number of ticks (model calls at P = 1): s*(M + N - 1) progressive, S*ceil(M/N) for blocks."""
    if geometry.kind in ("progressive", "fifo"):
        return geometry.substeps * (num_chunks + geometry.noisy - 1)
    return geometry.steps * math.ceil(num_chunks / geometry.noisy)
