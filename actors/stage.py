"""A pipeline stage: hosts a model replica, owns one noise-level band, and denoises it every tick."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from actors.backends.base import PromptEncodings
from actors.backends.factory import build_backend
from orchestrator.config import ModelConfig
from orchestrator.errors import UserError
from orchestrator.partition import BandView
from orchestrator.sampler import NoiseSource, denoise_view
from orchestrator.schedule import Geometry, Tick, level_sigmas


@dataclass(frozen=True)
class StageTick:
    """One stage's part of one tick, as the controller plans it (no tensors)."""

    tick: Tick
    view: BandView | None  # None: the band holds no chunk now (fill, drain) and makes no call
    draw: tuple[int, ...]  # entering chunks this stage needs, drawn here from their seeded noise
    keep: frozenset[int]  # chunks to hold (and publish) after the tick
    needs: frozenset[int]  # chunks this tick reads or keeps: its view's slice and `keep`
    emit: tuple[int, ...]  # chunks that finish in this stage's band this tick
    prompt: str


@dataclass(frozen=True)
class TickStats:
    stage: int
    tick: int
    call_seconds: float  # model call (0 if the band was empty)
    started: float  # wall clock, seconds
    finished: float
    received_bytes: int  # chunk bytes taken over from other stages (handoff and halo)


class Stage:
    """Plain class; the controller wraps it with ray.remote. Chunks are [Ch, C, h, w] float32 tensors."""

    def __init__(self, index: int, model: ModelConfig, threads: int):
        self.index = index
        torch.set_num_threads(threads)
        self.error = ""
        try:
            self.backend = build_backend(model)
        except (UserError, OSError, ValueError) as err:
            self.error = str(err)
            return
        self.encodings = PromptEncodings(self.backend)
        self.store: dict[int, torch.Tensor] = {}

    def ready(self) -> tuple[int, int, int]:
        """The latent frame shape, or the model-building error as a UserError."""
        if self.error:
            raise UserError(self.error)
        return self.backend.latent_shape

    def start(self, seed: int, geometry: Geometry, chunks: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Begin (or resume) a video holding `chunks`, its band's share of the window; returns them published."""
        shape = (self.backend.latent_shape[0], geometry.chunk, *self.backend.latent_shape[1:])
        self.noise = NoiseSource(seed, shape)
        self.sigmas = level_sigmas(geometry.steps, geometry.shift)  # [S+1]
        self.store = dict(chunks)
        return dict(self.store)

    def pid(self) -> int:
        return os.getpid()

    def tick(
        self, plan: StageTick, *peers: dict[int, torch.Tensor]
    ) -> tuple[dict[int, torch.Tensor], list[tuple[int, torch.Tensor]], TickStats]:
        """Take what the band needs from the peers' published chunks, make one model call, keep `plan.keep`.

        Returns (published chunks, emitted (index, chunk) pairs, stats).
        """
        started = time.time()
        tick, view = plan.tick, plan.view
        received = 0
        for peer in peers:
            for m in plan.needs.difference(self.store).intersection(peer):
                self.store[m] = peer[m]
                received += peer[m].numel() * peer[m].element_size()
        for m in plan.draw:
            self.store[m] = self.noise.chunk(m)
        call_seconds = 0.0
        if view is not None:
            call_started = time.perf_counter()
            self.store |= denoise_view(self.backend.velocity, tick, view, self.store, self.noise, self.sigmas,
                                       self.encodings.get(plan.prompt))
            call_seconds = time.perf_counter() - call_started
        emitted = [(m, self.store[m]) for m in plan.emit]
        self.store = {m: x for m, x in self.store.items() if m in plan.keep}
        stats = TickStats(self.index, tick.index, call_seconds, started, time.time(), received)
        return dict(self.store), emitted, stats
