"""The engine: continuous batching of videos (streams) over the stages of an executor, in process or on Ray."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from actors.backends.factory import frame_count
from actors.stage import StageTick, TickStats
from orchestrator.core.config import Config, engine_identity
from orchestrator.core.errors import RunFailed, UserError
from orchestrator.core.planner import TickPlanner
from orchestrator.core.schedule import Tick, ticks
from orchestrator.engine.executor import Executor
from orchestrator.engine.jobs import JobQueue, StreamJob, conclude
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import Checkpointer, VideoPlan, begin, plan_video
from orchestrator.engine.steering import steer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ActiveStream:
    """A job on the stages: its tick schedule (the next tick prefetched), bookkeeping and refs."""

    job: StreamJob
    plan: VideoPlan
    planner: TickPlanner
    schedule: Iterator[Tick]
    checkpointer: Checkpointer
    start_refs: list | None  # each stage's published share at the start, read by the first tick only
    upcoming: Tick | None = None
    last: Tick | None = None  # the tick made last, whose end a checkpoint records
    started: float = field(default_factory=time.time)

    def __post_init__(self):
        self.upcoming = next(self.schedule, None)

    def advance(self) -> Tick:
        tick, self.upcoming = self.upcoming, next(self.schedule, None)
        return tick


class Engine:
    """Runs jobs from a queue on one executor's stages until the queue is closed and empty. It never imports Ray:
    the executor (orchestrator/engine/executor.py) runs the stages and the sink, in process or as Ray actors.

    Every tick, each stage gets one call carrying all active streams; new streams join only when every
    active stream has just finished a shift (or block), and a stream leaves after its last tick."""

    def __init__(self, executor: Executor, config: Config, metrics: PipelineMetrics, bar: tqdm | None = None):
        self.executor, self.config, self.metrics = executor, config, metrics
        self.max_streams = config.pipeline.max_streams
        self.identity = engine_identity(config)
        self.frames_of = frame_count(config.model)
        self.active: dict[str, ActiveStream] = {}
        self.clock = TickClock(executor, metrics, config.pipeline.lookahead, self.written, bar)
        self.states: list = [None] * executor.stages_count  # each stage's published refs from the last tick
        self.ended_ids: collections.deque[str] = collections.deque()  # whose per-video series are still kept
        self.pending_requeue: list[StreamJob] = []  # taken from the queue but not yet admitted when it died

    # --- joining and leaving -------------------------------------------------------------------------------

    def admit(self, job: StreamJob) -> None:
        """Open the job's video in the sink and its window in the stages; a job that cannot start fails alone."""
        config = job.config
        config.pipeline = copy.deepcopy(self.config.pipeline)  # the partition of the stages it runs on
        try:
            if engine_identity(config) != self.identity:
                raise UserError("a job's model, schedule or pipeline settings differ from the pipeline's")
            plan = plan_video(config, self.frames_of)
            job.frames_total = plan.size.frames
            start, checkpointer = begin(job.run, config, plan, self.executor.latent_shape)
            self.executor.open(job.id, config, plan.size, plan.prompts, str(job.run.segments),
                               start.sink if start.resumed else None)
        except UserError as err:
            self.end(job, error=err)
            return
        g = plan.geometry
        planner = TickPlanner(plan.partition, g.noisy, g.context)
        last_stage = self.executor.stages_count - 1
        planner.holder = {m: last_stage for m in range(-start.init_count, 0)}
        schedule = ticks(g, plan.num_chunks, start.init_count)
        for tick in schedule:  # replay the bookkeeping (no model calls) up to where the run stands
            if tick.index == start.next_tick:
                schedule = itertools.chain([tick], schedule)
                break
            planner.plan(tick, "")
        planner.published = True  # the first tick reads the start's shares
        shares = [start.window.only([m for m in start.window.chunks if planner.holder[m] == j])
                  for j in range(self.executor.stages_count)]
        start_refs = self.executor.start(job.id, config.seed, g, shares)
        job.run.set_status("running", start.sink.frames, plan.size.frames, config.output.out)
        job.admitted = True
        self.active[job.id] = ActiveStream(job, plan, planner, schedule, checkpointer, start_refs)
        self.metrics.streams.labels(self.metrics.run_id).set(len(self.active))
        job.written = start.sink.frames
        job.on_frames(job.written)

    KEEP_SERIES = 256  # ended videos whose per-video metric series stay exported

    def end(self, job: StreamJob, out: Path | None = None, error: BaseException | None = None) -> None:
        self.active.pop(job.id, None)
        self.metrics.streams.labels(self.metrics.run_id).set(len(self.active))
        conclude(job, out, error)
        self.ended_ids.append(job.id)
        while len(self.ended_ids) > self.KEEP_SERIES:
            self.metrics.forget(self.ended_ids.popleft())

    def drop(self, stream: ActiveStream, error: BaseException | None = None) -> None:
        """Take a stream off the stages and the sink before its end: cancelled, or failed alone."""
        self.clock.drain()
        self.executor.drop(stream.job.id)
        with contextlib.suppress(Exception):
            self.executor.abort(stream.job.id, timeout=30)
        self.end(stream.job, error=error or UserError("cancelled"))

    def interrupted(self) -> list[StreamJob]:
        """The jobs on the stages when the pipeline failed; their open segments are dropped."""
        jobs = [stream.job for stream in self.active.values()]
        for job in jobs:
            with contextlib.suppress(Exception):
                self.executor.abort(job.id, timeout=5)
        self.active.clear()
        return jobs

    # --- the tick loop -------------------------------------------------------------------------------------

    def run(self, queue: JobQueue) -> None:
        """Until the queue is closed and empty (see steps)."""
        for _ in self.steps(queue):
            pass

    def steps(self, queue: JobQueue) -> Iterator[None]:
        """Run the queue, yielding after every tick submitted, until it is closed and empty. On a dead stage or sink
        the active jobs go back to the queue (to continue from their checkpoints) and the error is raised; any other
        error, or closing the generator, ends them as failed or interrupted."""
        at_boundary = True
        died, cause = self.executor.died, self.executor.cause
        try:
            while self.active or not queue.finished:
                if at_boundary and queue.suspended:
                    self.suspend_all()
                    return
                if at_boundary and len(self.active) < self.max_streams:
                    self.admit_all(queue.take(self.max_streams - len(self.active), wait=0 if self.active else 0.5))
                for stream in [s for s in self.active.values() if s.job.cancelled.is_set()]:
                    self.drop(stream)
                for stream in list(self.active.values()):
                    self.steer(stream)
                at_boundary = self.tick() if self.active else True
                yield
            self.clock.drain()
        except BaseException as err:
            jobs = self.interrupted()
            if not died(err):
                for job in jobs:
                    self.end(job, error=cause(err) if isinstance(err, Exception) else err)
                raise
            for job in jobs:  # continue from their checkpoints on a rebuilt pipeline, a bounded number of times
                job.attempts += 1
            retry = [job for job in jobs if job.attempts <= self.config.recovery.max_restarts]
            retry += self.pending_requeue
            for job in jobs:
                if job not in retry:
                    self.end(job, error=RunFailed(f"the pipeline died {job.attempts} times while making it"))
            queue.requeue(retry)
            raise

    def suspend_all(self) -> None:
        """Checkpoint every stream at this shift boundary and take it off the stages, recorded 'interrupted' and
        resumable (nothing is concluded: whoever owns the jobs continues them later)."""
        for stream in list(self.active.values()):
            if stream.last is not None:
                self.checkpoint(stream, stream.last)
        for job in self.interrupted():
            job.run.set_status("interrupted", None, job.frames_total, job.config.output.out, "server stopped")

    def admit_all(self, jobs: list[StreamJob]) -> None:
        """Admit jobs in order; if the pipeline dies meanwhile, the ones not yet admitted wait again."""
        for i, job in enumerate(jobs):
            try:
                self.admit(job)
            except Exception as err:
                if self.executor.died(err):
                    self.pending_requeue = jobs[i:]
                    raise
                self.end(job, error=self.executor.cause(err))

    def tick(self) -> bool:
        """One tick of every active stream; returns whether all of them just ended a shift (or block)."""
        streams = list(self.active.values())
        per_stage: list[dict[str, StageTick]] = [{} for _ in range(self.executor.stages_count)]
        peers: list[dict] = [{} for _ in range(self.executor.stages_count)]  # ref -> None, an ordered set per stage
        ticks_now = {}
        for stream in streams:
            tick = stream.last = stream.advance()
            final = stream.upcoming is None
            ticks_now[stream.job.id] = tick
            refs = stream.start_refs or self.states
            plans = stream.planner.plan(tick, stream.plan.prompts.of(tick.cond_chunk))
            for j, (stage_tick, sources) in enumerate(plans):
                per_stage[j][stream.job.id] = dataclasses.replace(stage_tick, final=final)
                for k in sorted(sources):
                    peers[j][refs[k]] = None
            stream.start_refs = None
        outputs = self.executor.tick(per_stage, [list(sources) for sources in peers])
        self.states = [published for published, _, _ in outputs]
        emitting = [out[1] for out, plans in zip(outputs, per_stage, strict=True)
                    if any(p.emit for p in plans.values())]
        written = self.executor.write(emitting) if emitting else None
        self.clock.submitted([stats for _, _, stats in outputs], written)
        for stream in streams:
            tick = ticks_now[stream.job.id]
            if tick.finished:
                self.metrics.chunks.labels(stream.job.id).inc(len(tick.finished))
            try:
                if stream.upcoming is None:
                    self.finish(stream)
                elif tick.boundary and stream.checkpointer.policy.due():
                    self.checkpoint(stream, tick)
                if stream.job.on_tick is not None:
                    stream.job.on_tick(tick)
            except Exception as err:
                if self.executor.died(err):
                    raise
                self.drop(stream, self.executor.cause(err))  # e.g. its output location is full: it fails alone
        return all(t.boundary for t in ticks_now.values())

    def steer(self, stream: ActiveStream) -> None:
        """Apply the prompt changes and the stop due before the stream's next tick (engine/steering.py); a video
        whose change cannot be recorded fails alone."""
        job = stream.job
        try:
            revision = steer(job.steering, job.config, job.run, stream.upcoming, stream.checkpointer.init_count,
                             self.frames_of)
        except Exception as err:
            self.drop(stream, err)
            return
        if revision is None:
            return
        stream.plan, job.frames_total = revision.plan, revision.plan.size.frames
        stream.checkpointer.renew(job.config, revision.plan)
        self.executor.revise(job.id, job.config, revision.plan.size, revision.plan.prompts)
        if revision.remaining is not None:
            stream.schedule, stream.upcoming = revision.remaining, next(revision.remaining, None)
        if revision.change is not None:
            self.metrics.prompt_changes.labels(job.id).inc()

    def checkpoint(self, stream: ActiveStream, tick: Tick) -> None:
        if not stream.planner.published:
            raise RuntimeError(f"a checkpoint after tick {tick.index}, whose chunks the stages did not hand on")
        checkpointer, published = stream.checkpointer, self.states

        def take() -> int:
            self.clock.drain()  # the pipeline pauses while the checkpoint is taken
            return self.executor.save_checkpoint(stream.job.id, checkpointer.store.uri, checkpointer.store.keep,
                                                 tick.index + 1, checkpointer.meta, published)

        seconds = checkpointer.timed(take)
        stream.job.checkpoint_seconds = checkpointer.seconds
        self.metrics.checkpoint_seconds.labels(stream.job.id).observe(seconds)

    def finish(self, stream: ActiveStream) -> None:
        self.clock.drain()
        out = Path(self.executor.finish(stream.job.id))
        self.end(stream.job, out=out)

    def written(self, frames: dict[str, int]) -> None:
        """Frames written so far per stream, as the sink reports them after a tick."""
        for stream_id, count in frames.items():
            stream = self.active.get(stream_id)
            if stream is None:
                continue
            self.metrics.frames.labels(stream_id).inc(count - stream.job.written)
            if stream.job.first_frame_seconds is None and count > stream.job.written:
                stream.job.first_frame_seconds = time.time() - stream.job.created
                self.metrics.first_frame.labels(stream_id).set(stream.job.first_frame_seconds)
            stream.job.written = count
            elapsed = max(time.time() - stream.started, 1e-9)
            rate = count / elapsed
            self.metrics.fps.labels(stream_id).set(rate)
            self.metrics.eta.labels(stream_id).set((stream.plan.size.frames - count) / rate if rate else float("nan"))
            stream.job.on_frames(count)


class TickClock:
    """Keeps at most `lookahead` ticks in flight and turns finished ticks into metrics and frame counts."""

    def __init__(self, executor: Executor, metrics: PipelineMetrics, lookahead: int,
                 on_written: Callable[[dict[str, int]], None], bar: tqdm | None = None):
        self.executor, self.metrics, self.lookahead = executor, metrics, lookahead
        self.on_written, self.bar = on_written, bar
        self.pending: collections.deque = collections.deque()
        self.started = time.time()
        self.busy = [0.0] * executor.stages_count
        self.last_end: float | None = None

    def submitted(self, stats_refs: list, written_ref) -> None:
        self.pending.append((stats_refs, written_ref))
        while len(self.pending) > self.lookahead:
            self._complete(*self.pending.popleft())

    def drain(self) -> None:
        while self.pending:
            self._complete(*self.pending.popleft())

    def _complete(self, stats_refs: list, written_ref) -> None:
        stats: list[TickStats] = self.executor.get(stats_refs)
        run = self.metrics.run_id
        begin_at, end = min(s.started for s in stats), max(s.finished for s in stats)
        self.metrics.ticks.labels(run).inc()
        self.metrics.tick_seconds.labels(run).observe(end - (self.last_end or begin_at))
        for s in stats:
            stage = str(s.stage)
            self.busy[s.stage] += s.call_seconds
            self.metrics.call_seconds.labels(run, stage).observe(s.call_seconds)
            self.metrics.handoff_bytes.labels(run, stage).inc(s.received_bytes)
            self.metrics.collective_seconds.labels(run, stage).observe(s.collective_seconds)
            self.metrics.collective_bytes.labels(run, stage).inc(s.collective_bytes)
            if self.last_end is not None:
                self.metrics.handoff_seconds.labels(run, stage).observe(max(0.0, s.started - self.last_end))
        self.metrics.batch_streams.labels(run).observe(max(s.streams for s in stats))
        self.last_end = end
        if written_ref is not None:
            self.on_written(self.executor.get(written_ref))
        if self.bar is not None:
            elapsed = max(time.time() - self.started, 1e-9)
            self.bar.set_postfix_str("busy " + "/".join(f"{b / elapsed:.0%}" for b in self.busy), refresh=False)
