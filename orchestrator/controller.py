"""The control plane on Ray: builds stage and sink actors, runs the tick clock, routes chunk refs actor to actor."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from actors.sink import Sink
from actors.stage import Stage, StageTick, TickStats
from orchestrator.config import Config, PipelineConfig
from orchestrator.errors import RunFailed, UserError
from orchestrator.generate import Checkpointer, VideoPlan, begin, frame_progress
from orchestrator.metrics import PipelineMetrics
from orchestrator.partition import Partition, band_views
from orchestrator.run_state import StartState
from orchestrator.runs import RunFolder
from orchestrator.schedule import Tick, ticks

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(cfg: PipelineConfig) -> Iterator[None]:
    """Join pipeline.ray_address or RAY_ADDRESS, else start a local cluster; stop only what we started."""
    if ray.is_initialized():
        yield
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=True)
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(cfg: PipelineConfig) -> None:
    """Fail before starting, with the fix, if the stages cannot all be placed at once."""
    available = ray.cluster_resources()
    for name, each in (("CPU", cfg.num_cpus), ("GPU", cfg.num_gpus)):
        need, have = cfg.stages * each, available.get(name, 0.0)
        if need > have + 1e-9:
            key = f"pipeline.num_{name.lower()}s"
            raise UserError(
                f"{cfg.stages} stages x {key}={each:g} need {need:g} {name}s but the Ray cluster has {have:g}: "
                f"lower pipeline.stages or {key} (fractions allowed)"
            )


def remote_cause(err: Exception) -> Exception:
    """The exception a stage raised, unwrapped from Ray's envelope."""
    return err.cause if isinstance(err, RayTaskError) and err.cause is not None else err


@dataclass
class TickPlanner:
    """Pure bookkeeping of which stage holds which chunk, turning each Tick into per-stage StageTicks."""

    partition: Partition
    noisy: int
    context: int
    holder: dict[int, int] = field(default_factory=dict)  # chunk -> stage that holds it after the last tick

    def __post_init__(self):
        self.bands = self.partition.bands(self.noisy)
        self.last = len(self.bands) - 1
        self.stage_of = {p: j for j, band in enumerate(self.bands) for p in band}

    def plan(self, tick: Tick, prompt: str) -> list[tuple[StageTick, set[int]]]:
        """For every stage: its StageTick and the stages whose published chunks it reads."""
        views = {view.stage: view for view in band_views(tick, self.partition, self.noisy)}
        context_after = tick.context_after(self.context)
        entries = [c.chunk for c in tick.context] + [u.chunk for u in tick.noisy]
        plans = []
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
            plans.append((StageTick(tick, view, draw, frozenset(keep), frozenset(wanted), emit, prompt), sources))
        self.holder = {m: j for j, (stage_tick, _) in enumerate(plans) for m in stage_tick.keep}
        return plans


class Pipeline:
    """P stage actors and a sink actor; long-lived, so several videos can run on the same stages."""

    def __init__(self, config: Config):
        cfg = config.pipeline
        self.stages_count = cfg.stages
        threads = cfg.threads or max(1, round(cfg.num_cpus))
        stage_cls = ray.remote(Stage).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
        self.stages = [stage_cls.remote(j, config.model, threads) for j in range(cfg.stages)]
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.sink = Sink.options(num_cpus=0, scheduling_strategy=here).remote()  # writes files on this node
        try:
            shapes = ray.get([stage.ready.remote() for stage in self.stages], timeout=cfg.start_timeout)
        except RayTaskError as err:
            self.shutdown()
            raise UserError(f"a stage could not build its model: {remote_cause(err)}") from None
        except GetTimeoutError:
            self.shutdown()
            raise UserError(
                f"the stages did not start within pipeline.start_timeout={cfg.start_timeout:g} s: the cluster may "
                f"be busy or lack the requested resources (pipeline.num_cpus={cfg.num_cpus:g}, "
                f"pipeline.num_gpus={cfg.num_gpus:g} per stage)"
            ) from None
        self.latent_shape = shapes[0]

    def shutdown(self) -> None:
        for actor in [*self.stages, self.sink]:
            ray.kill(actor)

    def run(self, config: Config, plan: VideoPlan, metrics: PipelineMetrics, bar: tqdm, start: StartState,
            checkpointer: Checkpointer) -> Path:
        """Generate one video from `start`; returns the final MP4 path. Checkpoints at shift boundaries when
        the policy says so. On failure the sink drops its open segments (closed ones stay for a resume)."""
        g = plan.geometry
        workdir = str(checkpointer.run.segments)
        unwrap_get(self.sink.open.remote(config, plan.size, plan.prompts, workdir,
                                         start.sink if start.resumed else None))
        planner = TickPlanner(plan.partition, g.noisy, g.context)
        planner.holder = {m: self.stages_count - 1 for m in range(-start.init_count, 0)}
        schedule = ticks(g, plan.num_chunks, start.init_count)
        for tick in schedule:  # replay the bookkeeping (no model calls) up to where the run stands
            if tick.index == start.next_tick:
                schedule = itertools.chain([tick], schedule)
                break
            planner.plan(tick, "")
        states = [  # each stage's share of the window, published for its neighbours' first tick
            stage.start.remote(config.seed, g, {m: x for m, x in start.window.items() if planner.holder[m] == j})
            for j, stage in enumerate(self.stages)
        ]
        ray.wait(states, num_returns=len(states))
        clock = TickClock(metrics, bar, plan.size.frames, self.stages_count, config.pipeline.lookahead,
                          start.sink.frames)
        try:
            for tick in schedule:
                prompt = plan.prompts.of(tick.cond_chunk)
                plans = planner.plan(tick, prompt)
                outputs = [
                    stage.tick.options(num_returns=3).remote(stage_tick, *(states[k] for k in sorted(sources)))
                    for stage, (stage_tick, sources) in zip(self.stages, plans, strict=True)
                ]
                states = [published for published, _, _ in outputs]
                emitted = [out[1] for out, (stage_tick, _) in zip(outputs, plans, strict=True) if stage_tick.emit]
                written = self.sink.write.remote(*emitted) if emitted else None
                clock.submitted([stats for _, _, stats in outputs], written, len(tick.finished))
                if tick.boundary and checkpointer.policy.due():

                    def take(next_tick=tick.index + 1, published=states) -> int:
                        clock.drain()  # the pipeline pauses while the checkpoint is taken
                        return unwrap_get(self.sink.save_checkpoint.remote(
                            checkpointer.store.uri, checkpointer.store.keep, next_tick, checkpointer.meta, *published
                        ))

                    seconds = checkpointer.timed(take)
                    metrics.checkpoint_seconds.labels(metrics.run_id).observe(seconds)
            clock.drain()
            out = Path(ray.get(self.sink.finish.remote()))
        except BaseException:
            with contextlib.suppress(Exception):
                ray.get(self.sink.abort.remote(), timeout=30)
            raise
        return out


def unwrap_get(ref):
    """ray.get that re-raises a task's UserError as itself."""
    try:
        return ray.get(ref)
    except RayTaskError as err:
        if isinstance(remote_cause(err), UserError):
            raise remote_cause(err) from None
        raise


class TickClock:
    """Keeps at most `lookahead` ticks in flight and turns finished ticks into metrics and progress."""

    def __init__(self, metrics: PipelineMetrics, bar: tqdm, frames: int, stages: int, lookahead: int = 2,
                 written: int = 0):
        self.metrics, self.bar, self.frames = metrics, bar, frames
        self.lookahead = lookahead
        self.pending: deque = deque()
        self.started = time.time()
        self.busy = [0.0] * stages
        self.written = written  # frames the sink has written
        self.last_end: float | None = None

    def submitted(self, stats_refs: list, written_ref, chunks: int) -> None:
        self.pending.append((stats_refs, written_ref, chunks))
        while len(self.pending) > self.lookahead:
            self._complete(*self.pending.popleft())

    def drain(self) -> None:
        while self.pending:
            self._complete(*self.pending.popleft())

    def _complete(self, stats_refs: list, written_ref, chunks: int) -> None:
        stats: list[TickStats] = ray.get(stats_refs)
        run = self.metrics.run_id
        begin, end = min(s.started for s in stats), max(s.finished for s in stats)
        self.metrics.ticks.labels(run).inc()
        self.metrics.tick_seconds.labels(run).observe(end - (self.last_end or begin))
        for s in stats:
            stage = str(s.stage)
            self.busy[s.stage] += s.call_seconds
            self.metrics.call_seconds.labels(run, stage).observe(s.call_seconds)
            self.metrics.handoff_bytes.labels(run, stage).inc(s.received_bytes)
            if self.last_end is not None:
                self.metrics.handoff_seconds.labels(run, stage).observe(max(0.0, s.started - self.last_end))
        self.last_end = end
        if written_ref is not None:
            written = ray.get(written_ref)
            self.metrics.chunks.labels(run).inc(chunks)
            self.metrics.frames.labels(run).inc(written - self.written)
            self.bar.update(written - self.written)
            self.written = written
        elapsed = max(time.time() - self.started, 1e-9)
        rate = self.written / elapsed
        self.metrics.fps.labels(run).set(rate)
        self.metrics.eta.labels(run).set((self.frames - self.written) / rate if rate else float("nan"))
        self.bar.set_postfix_str("busy " + "/".join(f"{b / elapsed:.0%}" for b in self.busy), refresh=False)


def stage_died(err: BaseException) -> bool:
    """A stage or the sink process is gone (killed, node lost), as opposed to an error in our code."""
    return isinstance(err, RayActorError | ObjectLostError) or (
        isinstance(err, RayTaskError) and isinstance(err.cause, RayActorError | ObjectLostError)
    )


def run_video(pipeline: Pipeline, config: Config, plan: VideoPlan, run: RunFolder, metrics: PipelineMetrics,
              progress: bool = False) -> tuple[Path, Checkpointer]:
    """One video on built stages, from the run's newest valid checkpoint or from the start."""
    start, checkpointer = begin(run, config, plan, pipeline.latent_shape)
    with frame_progress(plan.size.frames, progress, start.sink.frames) as bar:
        return pipeline.run(config, plan, metrics, bar, start, checkpointer), checkpointer


def run_pipeline(config: Config, plan: VideoPlan, run: RunFolder, progress: bool) -> tuple[Path, Checkpointer, int]:
    """The CLI path: a Ray session, P stages and a sink; on a dead stage the pipeline is rebuilt and the run
    continues from its last checkpoint, up to recovery.max_restarts times. Returns (out, checkpointer, restarts)."""
    metrics = PipelineMetrics(run.run_id, config.pipeline.stages)
    restarts = 0
    with ray_session(config.pipeline):
        check_resources(config.pipeline)
        metrics.serve(config.metrics.host, config.metrics.port)
        metrics.streams.labels(metrics.run_id).set(1)
        try:
            while True:
                pipeline = Pipeline(config)
                try:
                    out, checkpointer = run_video(pipeline, config, plan, run, metrics, progress)
                    return out, checkpointer, restarts
                except Exception as err:
                    metrics.errors.labels(metrics.run_id, type(remote_cause(err)).__name__).inc()
                    if not stage_died(err):
                        raise
                    if restarts >= config.recovery.max_restarts:
                        raise RunFailed(f"a pipeline actor died {restarts + 1} times; giving up: {err}") from None
                    restarts += 1
                    metrics.restarts.labels(metrics.run_id).inc()
                    log.warning("a pipeline actor died (%s); restart %d of %d from the last checkpoint",
                                type(err).__name__, restarts, config.recovery.max_restarts)
                    time.sleep(config.recovery.backoff_seconds * 2 ** (restarts - 1))
                finally:
                    pipeline.shutdown()
        finally:
            metrics.close()
