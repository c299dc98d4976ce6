"""Splitting the window into P noise-level bands, and what each band's model call sees (docs/design.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.config import PipelineConfig
from orchestrator.core.errors import UserError
from orchestrator.core.schedule import Tick


@dataclass(frozen=True)
class Partition:
    """P contiguous bands over the N noisy positions; stage 0 owns the newest (noisiest) band.

    parallel = 'context': the bands make every call together, each on its own chunks (the oldest band also the
    context), and the call equals the whole window's: exact PA-VDM. parallel = 'halo': each band calls the model
    alone on its chunks and `halo` neighbours on each side; halo = None means 'all', the whole window (exact).
    """

    stages: int = 1
    halo: int | None = None
    parallel: str = "halo"

    @classmethod
    def from_config(cls, stages: int, halo: int | str, noisy: int, parallel: str = "halo") -> Partition:
        if stages > noisy:
            raise UserError(
                f"pipeline.stages ({stages}) exceeds the {noisy} noisy chunks of the window: "
                f"use at most {noisy} stages or raise schedule.noisy_chunks"
            )
        if parallel == "context":
            return cls(stages, 0, parallel)
        return cls(stages, None if halo == "all" else int(halo))

    @classmethod
    def of_pipeline(cls, pipeline: PipelineConfig, noisy: int) -> Partition:
        """The partition that the pipeline settings ask for, over `noisy` noisy chunks (0 stages, the in-process
        executor, is one stage)."""
        return cls.from_config(max(pipeline.stages, 1), pipeline.halo, noisy, pipeline.parallel)

    @property
    def joint(self) -> bool:
        """The stages compute each call together (context parallelism)."""
        return self.parallel == "context" and self.stages > 1

    @property
    def exact(self) -> bool:
        """The video is plain PA-VDM's, whatever P."""
        return self.joint or self.halo is None or self.stages == 1

    def approximation_note(self) -> str | None:
        """One line for a run whose video differs from PA-VDM's (a halo smaller than the window), else None."""
        if self.exact:
            return None
        return (f"pipeline.parallel=halo with halo {self.halo} over {self.stages} stages: the video differs from "
                "PA-VDM's (each band sees only part of the window; EVALUATION.md, 'Halo damage'); "
                "pipeline.parallel=context is exact")

    def bands(self, noisy: int) -> list[range]:
        """Positions owned by each stage, stage 0 first (newest positions), as near-equal contiguous runs. The
        larger runs go to the oldest bands, or in a joint partition to the newest: there the oldest band also
        computes the context's tokens, and the stages of one call wait for each other."""
        base, extra = divmod(noisy, self.stages)
        sizes = [base + (1 if i < extra else 0) for i in range(self.stages)]  # oldest band first
        if self.joint:
            sizes.reverse()
        runs, start = [], 0
        for size in sizes:
            runs.append(range(start, start + size))
            start += size
        return runs[::-1]


@dataclass(frozen=True)
class BandView:
    """What one band's model call sees in one tick: a contiguous slice of [context + noisy], oldest first."""

    stage: int
    start: int  # slice of the tick's sequence (context chunks first, then noisy chunks)
    stop: int
    own: range  # indices (into the same sequence) of the chunks this band updates


def band_views(tick: Tick, partition: Partition, noisy: int) -> list[BandView]:
    """The calls of one tick: one per band that holds a chunk; empty bands (fill, drain) are skipped, except in
    a joint partition, where every band takes part in the one call (an empty band brings an empty slice, or the
    context alone) and the slices tile the window.

    Own chunks plus `halo` chunks on each side; the band holding the oldest position also sees
    the whole context, its older neighbour.
    """
    n_context = len(tick.context)
    length = n_context + len(tick.noisy)
    views = []
    for stage, band in enumerate(partition.bands(noisy)):
        own = [n_context + i for i, u in enumerate(tick.noisy) if u.position in band]
        if partition.joint and not own:  # it still takes part; the oldest band brings the context
            views.append(BandView(stage, 0, n_context if band.start == 0 else 0, range(0)))
            continue
        if not own:
            continue
        if partition.halo is None:
            start, stop = 0, length
        else:
            start = 0 if band.start == 0 else max(0, own[0] - partition.halo)
            stop = min(length, own[-1] + 1 + partition.halo)
        views.append(BandView(stage, start, stop, range(own[0], own[-1] + 1)))
    return views


def shares(views: list[BandView]) -> tuple[int, ...]:
    """The chunks each stage's slice holds in a joint call, stage 0 first: how the window is split among them."""
    return tuple(view.stop - view.start for view in sorted(views, key=lambda view: view.stage))
