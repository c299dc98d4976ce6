"""Videos waiting for or riding on the pipeline: jobs with their hooks, their queue, and how an end is recorded."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.config import Config
from orchestrator.core.errors import UserError, ending
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
    cancelled: threading.Event = field(default_factory=threading.Event)
    out: Path | None = None
    error: BaseException | None = None
    frames_total: int = 0
    checkpoint_seconds: float = 0.0
    admitted: bool = False  # on the stages (or ended there)
    attempts: int = 0  # pipelines that died while carrying it
    written: int = 0  # frames written so far

    @property
    def id(self) -> str:
        return self.run.run_id


class JobQueue:
    """Jobs waiting for the pipeline, first in first out; close() means no more will come."""

    def __init__(self, jobs: Iterator[StreamJob] = (), closed: bool = False):
        self.waiting: collections.deque[StreamJob] = collections.deque(jobs)
        self.changed = threading.Condition()
        self.closed = closed

    def put(self, job: StreamJob) -> None:
        with self.changed:
            self.waiting.append(job)
            self.changed.notify_all()

    def requeue(self, jobs: list[StreamJob]) -> None:
        """Jobs interrupted by a pipeline failure go first, to continue from their checkpoints."""
        with self.changed:
            self.waiting.extendleft(reversed(jobs))
            self.changed.notify_all()

    def remove(self, job: StreamJob) -> bool:
        """Take a waiting job out of the queue; False if it is not waiting (running, or gone)."""
        with self.changed:
            try:
                self.waiting.remove(job)
            except ValueError:
                return False
            return True

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def __len__(self) -> int:
        return len(self.waiting)

    def take(self, count: int, wait: float) -> list[StreamJob]:
        """Up to `count` jobs, waiting up to `wait` seconds for the first; cancelled ones are dropped."""
        taken, cancelled = [], []
        with self.changed:
            self.changed.wait_for(lambda: self.waiting or self.closed, wait)
            while self.waiting and len(taken) < count:
                job = self.waiting.popleft()
                (cancelled if job.cancelled.is_set() else taken).append(job)
        for job in cancelled:  # outside the lock: their hooks may take other locks
            conclude(job, error=UserError("cancelled"))
        return taken

    @property
    def finished(self) -> bool:
        with self.changed:
            return self.closed and not self.waiting


def conclude(job: StreamJob, out: Path | None = None, error: BaseException | None = None) -> None:
    """Record how a job ended in its run folder and tell whoever waits for it (whose errors are logged, so
    that they never reach the pipeline)."""
    job.out, job.error = out, error
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
