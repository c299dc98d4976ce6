"""Videos waiting for or riding on the pipeline: jobs with their hooks, their queue, and how an end is recorded."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.config import Config
from orchestrator.core.errors import UserError, ending
from orchestrator.core.schedule import Tick
from orchestrator.engine.steering import Steering
from orchestrator.state.runs import RunFolder

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StreamJob:
    """One video for the pipeline: its config (prompts, seed, seconds, outputs) and run folder, with hooks
    that report on it. The engine keeps the run's status file current."""

    config: Config
    run: RunFolder
    on_frames: Callable[[int], None] = lambda frames: None  # frames written so far
    on_end: Callable[[StreamJob], None] = lambda job: None  # completed, failed or cancelled
    on_tick: Callable[[Tick], None] | None = None  # after each of its ticks (in process: once made)
    cancelled: threading.Event = field(default_factory=threading.Event)
    out: Path | None = None
    error: BaseException | None = None
    frames_total: int = 0
    checkpoint_seconds: float = 0.0
    admitted: bool = False  # on the stages (or ended there)
    attempts: int = 0  # pipelines that died while carrying it
    written: int = 0  # frames written so far
    owner: str = ""  # whose video it is: the queue takes owners in turn
    created: float = field(default_factory=time.time)  # wall clock
    first_frame_seconds: float | None = None  # from created to its first frame written (this run of the job)
    steering: Steering = field(default_factory=Steering)  # prompt changes and a stop asked while it is made

    @property
    def id(self) -> str:
        return self.run.run_id


class JobQueue:
    """Jobs waiting for the pipeline: interrupted ones first, then the owners in turn (the one served longest ago
    first), each owner's jobs first in first out; close() means no more will come."""

    def __init__(self, jobs: Iterator[StreamJob] = (), closed: bool = False):
        self.waiting: collections.deque[StreamJob] = collections.deque(jobs)
        self.resuming: collections.deque[StreamJob] = collections.deque()  # interrupted by a pipeline failure
        self.served: dict[str, int] = {}  # owner -> turn at which it was last served
        self.turn = 0
        self.changed = threading.Condition()
        self.closed = closed
        self.suspended = False  # the engine is to checkpoint what it carries at the next boundary and stop

    def put(self, job: StreamJob) -> None:
        with self.changed:
            self.waiting.append(job)
            self.changed.notify_all()

    def requeue(self, jobs: list[StreamJob]) -> None:
        """Jobs interrupted by a pipeline failure go first, to continue from their checkpoints."""
        with self.changed:
            self.resuming.extend(jobs)
            self.changed.notify_all()

    def remove(self, job: StreamJob) -> bool:
        """Take a waiting job out of the queue; False if it is not waiting (running, or gone)."""
        with self.changed:
            for line in (self.resuming, self.waiting):
                if job in line:
                    line.remove(job)
                    return True
            return False

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def suspend(self) -> None:
        """No more jobs; the engine checkpoints those on the stages at the next shift boundary and lets them go,
        resumable, and the waiting ones stay where they are (a server's clean stop)."""
        with self.changed:
            self.closed = self.suspended = True
            self.changed.notify_all()

    def __len__(self) -> int:
        return len(self.resuming) + len(self.waiting)

    def waiting_of(self, owner: str) -> int:
        with self.changed:
            return sum(job.owner == owner for job in self.waiting)

    def _next(self) -> StreamJob:
        if self.resuming:
            return self.resuming.popleft()
        job = min(self.waiting, key=lambda waiting: self.served.get(waiting.owner, -1))  # the first of the least served
        self.waiting.remove(job)
        self.turn += 1
        self.served[job.owner] = self.turn
        return job

    def take(self, count: int, wait: float) -> list[StreamJob]:
        """Up to `count` jobs, waiting up to `wait` seconds for the first; cancelled ones are dropped."""
        taken, cancelled = [], []
        with self.changed:
            self.changed.wait_for(lambda: len(self) or self.closed, wait)
            while len(self) and len(taken) < count:
                job = self._next()
                (cancelled if job.cancelled.is_set() else taken).append(job)
        for job in cancelled:  # outside the lock: their hooks may take other locks
            conclude(job, error=UserError("cancelled"))
        return taken

    @property
    def finished(self) -> bool:
        with self.changed:
            return self.closed and not len(self)


def conclude(job: StreamJob, out: Path | None = None, error: BaseException | None = None) -> None:
    """Record how a job ended in its run folder and tell whoever waits for it (whose errors are logged, so
    that they never reach the pipeline)."""
    job.out, job.error = out, error
    job.steering.end()
    if out is not None:
        job.run.set_status("completed", job.frames_total, job.frames_total, str(out))
    elif job.cancelled.is_set():
        job.run.set_status("failed", None, job.frames_total, job.config.output.out, "cancelled")
    else:
        state, reason = ending(error)
        job.run.set_status(state, None, job.frames_total, job.config.output.out, reason)
    try:
        job.on_end(job)
    except Exception:
        log.exception("while reporting the end of %s", job.id)
