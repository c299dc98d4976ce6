"""Which stage holds which chunk of a stream, turning each Tick into per-stage StageTicks (no Ray, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.partition import BandView, Partition, band_views, shares
from orchestrator.core.schedule import Tick


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
    final: bool = False  # the stream's last tick: the stage forgets it afterwards
    shares: tuple[int, ...] = ()  # joint partition: the chunks every stage's slice holds, stage 0 first
    publish: bool = True  # hand the held chunks on after the tick: a stage or a checkpoint reads them next


@dataclass
class TickPlanner:
    """Pure bookkeeping of which stage holds which chunk, turning each Tick into per-stage StageTicks."""

    partition: Partition
    noisy: int
    context: int
    holder: dict[int, int] = field(default_factory=dict)  # chunk -> stage that holds it after the last tick
    published: bool = True  # whether the last tick's stages handed on their chunks (a start always does)

    def __post_init__(self):
        self.bands = self.partition.bands(self.noisy)
        self.last = len(self.bands) - 1
        self.stage_of = {p: j for j, band in enumerate(self.bands) for p in band}
        # Halo bands (h > 0) read their neighbours' chunks every tick; otherwise chunks change bands only between
        # shifts (or blocks), so the stages hand them on, and checkpoints read them, only at a shift's last tick.
        self.reads_every_tick = len(self.bands) > 1 and not self.partition.joint and self.partition.halo != 0

    def plan(self, tick: Tick, prompt: str) -> list[tuple[StageTick, set[int]]]:
        """For every stage: its StageTick and the stages whose published chunks it reads."""
        views = {view.stage: view for view in band_views(tick, self.partition, self.noisy)}
        split = shares(list(views.values())) if self.partition.joint else ()
        context_after = tick.context_after(self.context)
        entries = [c.chunk for c in tick.context] + [u.chunk for u in tick.noisy]
        plans = []
        publish = tick.boundary or self.reads_every_tick
        for j in range(len(self.bands)):
            own = {u.chunk for u in tick.noisy if self.stage_of[u.position] == j}
            emit = tuple(m for m in tick.finished if m in own)
            keep = (own - set(emit)) | (set(emit) & set(context_after))
            if j == self.last:
                keep |= set(context_after) - set(tick.finished)
            view = views.get(j)
            wanted = keep | (set(entries[view.start : view.stop]) if view else set())
            draw = tuple(m for m in tick.entering if m in wanted)
            sources = {self.holder[m] for m in wanted - set(draw)} - {j}
            if sources and not self.published:
                raise RuntimeError(f"tick {tick.index} reads chunks that the stages did not hand on after the last")
            plans.append((StageTick(tick, view, draw, frozenset(keep), frozenset(wanted), emit, prompt,
                                    shares=split, publish=publish), sources))
        self.holder = {m: j for j, (stage_tick, _) in enumerate(plans) for m in stage_tick.keep}
        self.published = publish
        return plans
