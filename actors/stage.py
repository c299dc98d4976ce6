"""A pipeline stage: hosts a model replica, owns one noise-level band, and denoises it every tick."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass

import torch

from actors.backends.base import Backend, PromptEncodings
from actors.backends.collective import CollectiveStats, StageGroup, free_port
from actors.backends.factory import build_backend
from actors.cores import bind_own_cores
from orchestrator.core.config import ModelConfig
from orchestrator.core.errors import UserError
from orchestrator.core.planner import StageTick
from orchestrator.core.sampler import LevelGrid, NoiseSource, Window, denoise_views
from orchestrator.core.schedule import Geometry


@dataclass(frozen=True)
class TickStats:
    stage: int
    tick: int
    call_seconds: float  # model call (0 if the band was empty)
    started: float  # wall clock, seconds
    finished: float
    received_bytes: int  # chunk bytes taken over from other stages (handoff and halo)
    streams: int = 1  # streams in this stage's model call (0 if it made none)
    collective_seconds: float = 0.0  # joint calls: time in collectives, waiting for the other stages included
    collective_bytes: int = 0  # joint calls: bytes received from the other stages in collectives


@dataclass
class StreamWindow:
    """A stage's part of one stream (video): its noise and the chunks of its band it holds, with their history."""

    noise: NoiseSource
    store: Window


Published = dict[str, Window]  # stream -> the chunks (and solver history) neighbours may read


class Stage:
    """Plain class: the Ray executor makes it an actor, the in-process executor calls it directly. Chunks are
    [Ch, C, h, w] float32 tensors.

    A stage carries several streams at once; every tick, the calls of all its streams whose band slices have
    the same shape are one batched model call."""

    def __init__(self, index: int, model: ModelConfig, threads: int, backend: Backend | None = None,
                 bind_cores: bool = False):
        """threads: torch threads of this process (0 leaves them as they are); backend: a model already loaded
        (in process), else one is built from `model`; bind_cores: a stage on the CPU computes on `threads` cores of
        its own (actors/cores.py), where that many are free."""
        self.index = index
        self.error = ""
        self.group: StageGroup | None = None  # set by join: the stages compute every call together
        if model.device == "cpu" and torch.cuda.is_available():  # the stage was given a GPU: it uses it
            model = dataclasses.replace(model, device="cuda")
        self.cores = bind_own_cores(threads) if bind_cores and model.device == "cpu" else []
        if threads:
            torch.set_num_threads(threads)
        try:
            self.backend = backend or build_backend(model)
        except (UserError, OSError, ValueError) as err:
            self.error = str(err)
            return
        self.encodings = PromptEncodings(self.backend)
        self.streams: dict[str, StreamWindow] = {}

    def ready(self) -> tuple[int, int, int]:
        """The latent frame shape, or the model-building error as a UserError."""
        if self.error:
            raise UserError(self.error)
        return self.backend.latent_shape

    def start(self, stream: str, seed: int, geometry: Geometry, share: Window) -> Published:
        """Begin (or resume) a stream holding `share`, its band's share of the window; returns it published."""
        shape = (self.backend.latent_shape[0], geometry.chunk, *self.backend.latent_shape[1:])
        self.grid = LevelGrid.of(geometry)  # one geometry per pipeline
        self.streams[stream] = StreamWindow(NoiseSource(seed, shape), share.copy())
        return {stream: share}

    def drop(self, stream: str) -> None:
        """Forget a stream that left early (cancelled or failed)."""
        self.streams.pop(stream, None)

    def pid(self) -> int:
        return os.getpid()

    def free_port(self) -> int:
        """A port free on this stage's host, where the stages' process group can meet (asked of stage 0)."""
        return free_port()

    def join(self, address: str, port: int, stages: int, timeout: float) -> None:
        """Join the stages' process group (all stages at once); from now on every model call is joint."""
        self.group = StageGroup(address, port, self.index, stages, self.backend.device, timeout)

    def tick(
        self, plans: dict[str, StageTick], *peers: Published
    ) -> tuple[Published, dict[str, list[tuple[int, torch.Tensor]]], TickStats]:
        """For every stream in `plans`: take what the band needs from the peers' published chunks (with their solver
        history), draw its entering noise; then the model calls (batched across streams); keep `plan.keep`.

        Returns (published chunks of the streams whose plan publishes, emitted (index, chunk) pairs per stream, stats).
        """
        started = time.time()
        received = 0
        for stream, plan in plans.items():
            window = self.streams[stream]
            for peer in peers:
                held = peer.get(stream, Window())
                taken = held.only(plan.needs.difference(window.store.chunks))
                window.store.update(taken)
                received += taken.nbytes
            for m in plan.draw:
                window.store.chunks[m] = window.noise.chunk(m)
        calling = [stream for stream, plan in plans.items() if plan.view is not None]
        call_seconds = 0.0
        if calling:
            call_started = time.perf_counter()
            bands = [(plans[s].tick, plans[s].view, self.streams[s].store, self.streams[s].noise,
                      self.encodings.get(plans[s].prompt)) for s in calling]
            joint = {} if self.group is None else {
                "shares": [plans[s].shares for s in calling],
                "shared": functools.partial(self.backend.shared_velocity, self.group)}
            updated = denoise_views(self.backend.velocity, self.backend.join_conds, self.grid, bands, **joint)
            for stream, stepped in zip(calling, updated, strict=True):
                self.streams[stream].store.update(stepped)
            call_seconds = time.perf_counter() - call_started
        collective = self.group.take_stats() if self.group is not None else CollectiveStats()
        published, emitted = {}, {}
        for stream, plan in plans.items():
            window = self.streams[stream]
            emitted[stream] = [(m, window.store.chunks[m]) for m in plan.emit]
            window.store = window.store.only(plan.keep)
            if plan.publish:
                published[stream] = window.store.copy()
            if plan.final:
                del self.streams[stream]
        stats = TickStats(self.index, min(p.tick.index for p in plans.values()), call_seconds, started, time.time(),
                          received, len(calling), collective.seconds, collective.bytes)
        return published, emitted, stats
