"""Splitting the window into P noise-level bands and the halo each band sees (docs/design.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.errors import UserError
from orchestrator.core.schedule import Tick


@dataclass(frozen=True)
class Partition:
    """P contiguous bands over the N noisy positions; stage 0 owns the newest (noisiest) band.

    halo = None means 'all': every band sees the whole window, which is exact PA-VDM.
    """

    stages: int = 1
    halo: int | None = None

    @classmethod
    def from_config(cls, stages: int, halo: int | str, noisy: int) -> Partition:
        if stages > noisy:
            raise UserError(
                f"pipeline.stages ({stages}) exceeds the {noisy} noisy chunks of the window: "
                f"use at most {noisy} stages or raise schedule.noisy_chunks"
            )
        return cls(stages, None if halo == "all" else int(halo))

    def bands(self, noisy: int) -> list[range]:
        """Positions owned by each stage, stage 0 first (newest positions), as near-equal contiguous runs."""
        base, extra = divmod(noisy, self.stages)
        sizes = [base + (1 if i < extra else 0) for i in range(self.stages)]  # oldest band first
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
    """The calls of one tick: one per band that holds a chunk; empty bands (fill, drain) are skipped.

    Own chunks plus `halo` chunks on each side; the band holding the oldest position also sees
    the whole context, its older neighbour.
    """
    n_context = len(tick.context)
    length = n_context + len(tick.noisy)
    views = []
    for stage, band in enumerate(partition.bands(noisy)):
        own = [n_context + i for i, u in enumerate(tick.noisy) if u.position in band]
        if not own:
            continue
        if partition.halo is None:
            start, stop = 0, length
        else:
            start = 0 if band.start == 0 else max(0, own[0] - partition.halo)
            stop = min(length, own[-1] + 1 + partition.halo)
        views.append(BandView(stage, start, stop, range(own[0], own[-1] + 1)))
    return views
