"""Steering a video while it is made: prompt changes from the next chunk to enter, a stop after the window drains."""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from orchestrator.core.config import Config
from orchestrator.core.frames import FrameCount
from orchestrator.core.prompts import with_prompt
from orchestrator.core.schedule import Tick, ticks
from orchestrator.engine.plan import VideoPlan, plan_video
from orchestrator.state.runs import RunFolder


@dataclass(eq=False)
class PromptChange:
    """One asked prompt change; `done` is set once the executor has recorded it in the run (or refused it)."""

    text: str
    transition: float = 0.0  # seconds over which the new prompt takes over from the one before
    done: threading.Event = field(default_factory=threading.Event)
    chunk: int | None = None  # the first chunk it conditions
    seconds: float | None = None  # when that chunk's first frame is shown: its start in the prompt schedule
    refused: str = ""  # why it cannot take effect


class Steering:
    """What was asked of a video while it is made, applied by its executor between ticks in the order asked: each
    prompt change at the next chunk to enter the window (one change per chunk), then a stop."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changes: collections.deque[PromptChange] = collections.deque()
        self.stop_asked = False
        self.stopped = threading.Event()  # set once the stop is recorded: no chunk enters after it
        self.last_chunk = -1  # the chunk the last applied change took effect at

    def change_prompt(self, text: str, transition: float = 0.0) -> PromptChange:
        change = PromptChange(text, transition)
        with self.lock:
            if self.stop_asked:
                change.refused = "the video is stopping"
                change.done.set()
            else:
                self.changes.append(change)
        return change

    def stop(self) -> bool:
        """Ask for the end after the chunks in the window drain; False if it was asked before."""
        with self.lock:
            asked, self.stop_asked = self.stop_asked, True
            return not asked

    def end(self) -> None:
        """The video left the pipeline: what is still waiting cannot take effect."""
        with self.lock:
            while self.changes:
                change = self.changes.popleft()
                change.refused = "the video ended before a chunk could take it"
                change.done.set()
            self.stop_asked = True
        self.stopped.set()

    @property
    def pending(self) -> bool:
        return bool(self.changes) or (self.stop_asked and not self.stopped.is_set())


@dataclass(frozen=True)
class Revision:
    """A video's settings after steering: its new plan, its remaining ticks when a stop shortened it, and the
    prompt change applied, if any."""

    plan: VideoPlan
    remaining: Iterator[Tick] | None = None
    change: PromptChange | None = None


def next_entering(upcoming: Tick) -> int:
    """The first chunk that has not entered the window before `upcoming` is made."""
    return min(upcoming.entering) if upcoming.entering else upcoming.cond_chunk + 1


def remaining_ticks(plan: VideoPlan, init_count: int, start: int) -> Iterator[Tick]:
    """The ticks of the planned video from index `start` on (those before it equal the longer video's)."""
    return itertools.dropwhile(lambda tick: tick.index < start, ticks(plan.geometry, plan.num_chunks, init_count))


def steer(steering: Steering, config: Config, run: RunFolder, upcoming: Tick, init_count: int,
          frames_of: FrameCount) -> Revision | None:
    """Apply what is due of a video's steering before `upcoming` is made, to its config (changed in place) and the
    run's saved config (before any tick uses it, so that a resume continues with it); None when nothing changed."""
    if not steering.pending:
        return None
    chunk = next_entering(upcoming)
    plan = plan_video(config, frames_of)
    with steering.lock:
        while steering.changes and chunk >= plan.num_chunks:  # the last chunk has entered: no change can show
            change = steering.changes.popleft()
            change.refused = "the video's last chunk has already entered the window"
            change.done.set()
        if steering.changes:
            if chunk <= steering.last_chunk:
                return None  # one change per chunk: the next waits for the next chunk
            change = steering.changes.popleft()
            change.chunk, change.seconds = chunk, plan.prompts.start_seconds(chunk)
            config.prompts = with_prompt(config.prompts, change.seconds, change.text, change.transition)
            steering.last_chunk = chunk
            run.save_config(config)
            change.done.set()
            return Revision(plan_video(config, frames_of), change=change)
        if not steering.stop_asked or chunk <= steering.last_chunk:
            return None  # a stop waits for the chunk of the last change to enter
        end = max(chunk, 1)  # the video ends with the last chunk that entered (at least one)
        if end >= plan.num_chunks:
            steering.stopped.set()
            return None  # it ends there anyway
        config.seconds = frames_of.video_frames(end * plan.geometry.chunk) / config.fps
        run.save_config(config)
        steering.stopped.set()
        shorter = plan_video(config, frames_of)
        return Revision(shorter, remaining_ticks(shorter, init_count, upcoming.index))
