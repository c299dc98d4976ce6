"""The control plane on Ray: builds stage and sink actors, runs the tick clock, routes chunk refs actor to actor."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from actors.sink import Sink
from actors.stage import Stage, StageTick, TickStats
from orchestrator.config import Config, PipelineConfig
from orchestrator.errors import UserError
from orchestrator.generate import VideoPlan, initial_chunks
from orchestrator.metrics import PipelineMetrics
from orchestrator.partition import Partition, band_views
from orchestrator.schedule import Tick, ticks


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
        context_after = ([c.chunk for c in tick.context] + list(tick.finished))[-self.context :] if self.context else []
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
            plans.append((StageTick(tick, view, draw, frozenset(keep), emit, prompt), sources))
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
            shapes = ray.get([stage.ready.remote() for stage in self.stages])
        except RayTaskError as err:
            self.shutdown()
            raise UserError(f"a stage could not build its model: {remote_cause(err)}") from None
        self.latent_shape = shapes[0]

    def shutdown(self) -> None:
        for actor in [*self.stages, self.sink]:
            ray.kill(actor)

    def run(
        self, config: Config, plan: VideoPlan, metrics: PipelineMetrics, bar: tqdm, initial: dict | None = None
    ) -> Path:
        """Generate one video; returns the final MP4 path. On failure the sink removes every partial file."""
        g = plan.geometry
        ray.get(self.sink.open.remote(config, plan.size, plan.prompts))
        initial = initial or {}
        ray.get([stage.start.remote(config.seed, g, initial if j == self.stages_count - 1 else {})
                 for j, stage in enumerate(self.stages)])
        planner = TickPlanner(plan.partition, g.noisy, g.context)
        for m in initial:
            planner.holder[m] = self.stages_count - 1
        clock = TickClock(metrics, bar, plan.size.frames, self.stages_count, config.pipeline.lookahead)
        states = [ray.put({}) for _ in self.stages]
        try:
            for tick in ticks(g, plan.num_chunks, len(initial)):
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
            clock.drain()
            out = Path(ray.get(self.sink.finish.remote()))
        except BaseException:
            with contextlib.suppress(Exception):
                ray.get(self.sink.abort.remote())
            raise
        return out


class TickClock:
    """Keeps at most `lookahead` ticks in flight and turns finished ticks into metrics and progress."""

    def __init__(self, metrics: PipelineMetrics, bar: tqdm, frames: int, stages: int, lookahead: int = 2):
        self.metrics, self.bar, self.frames = metrics, bar, frames
        self.lookahead = lookahead
        self.pending: deque = deque()
        self.started = time.time()
        self.busy = [0.0] * stages
        self.written = 0  # frames the sink has written
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


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def run_pipeline(config: Config, plan: VideoPlan, bar: tqdm) -> Path:
    """The CLI path: a Ray session, P stages and a sink for one video, metrics served while it runs."""
    metrics = PipelineMetrics(new_run_id(), config.pipeline.stages)
    with ray_session(config.pipeline):
        check_resources(config.pipeline)
        pipeline = Pipeline(config)
        try:
            initial = _initial_context(config, pipeline, plan)
            metrics.serve(config.metrics.host, config.metrics.port)
            metrics.streams.labels(metrics.run_id).set(1)
            try:
                return pipeline.run(config, plan, metrics, bar, initial)
            except (RayTaskError, RayActorError) as err:
                metrics.errors.labels(metrics.run_id, type(remote_cause(err)).__name__).inc()
                raise
        finally:
            metrics.close()
            pipeline.shutdown()


def _initial_context(config: Config, pipeline: Pipeline, plan: VideoPlan) -> dict:
    chunks = initial_chunks(config.init_latents, pipeline.latent_shape, plan.geometry.chunk)
    return {i - len(chunks): x for i, x in enumerate(chunks)}
