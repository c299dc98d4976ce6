"""The Ray executor: stage and sink actors, rebuilt when one dies, and the Ray session they live in."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from actors.sink import Sink
from actors.stage import Stage
from orchestrator.core.config import Config, PipelineConfig
from orchestrator.core.errors import RunFailed, UserError
from orchestrator.engine.engine import Engine
from orchestrator.engine.jobs import JobQueue
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.ray_errors import remote_cause, stage_died, unwrap_get

log = logging.getLogger(__name__)


SINK_NICENESS = 10  # the sink actor's: its work waits for the stages' (see Pipeline)

# A cluster of our own: its workers at the driver's priority (Ray starts them at niceness 15, behind every other
# process on the node), and without Ray's own bookkeeping of every task and its own metrics (several tasks run per
# tick, and that work takes the cores the stages compute on; pavdm exports its own metrics).
OWN_CLUSTER = {"worker_niceness": 0, "task_events_report_interval_ms": 0, "enable_metrics_collection": False}


@contextlib.contextmanager
def ray_session(cfg: PipelineConfig) -> Iterator[None]:
    """Join pipeline.ray_address or RAY_ADDRESS, else start a local cluster of our own (never one that `ray start`
    left on this machine); stop only what we started."""
    if ray.is_initialized():
        yield
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    ours = {} if address else {"_system_config": OWN_CLUSTER}
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=True, **ours)
    try:
        yield
    finally:
        ray.shutdown()


def with_stage_cpus(config: Config) -> Config:
    """The config with pipeline.num_cpus resolved: as given, or for 0 an equal share of the CPUs the cluster has
    free, at most a node's worth (no reservation at all when none are free)."""
    if config.pipeline.num_cpus:
        return config
    free = ray.available_resources().get("CPU", 0.0)
    largest = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0)
    resolved = copy.deepcopy(config)
    resolved.pipeline.num_cpus = min(free / config.pipeline.stages, largest)
    return resolved


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


def room_for_own_cores(cores: int) -> bool:
    """Whether every node of the cluster that offers CPUs has `cores` of them: then the stages on any node can each
    be bound to cores of their own (pipeline.bind_cores), however Ray places them; else none is bound."""
    offered = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]]
    return all(cpus >= cores for cpus in offered if cpus)


class Pipeline:
    """The Ray executor (orchestrator/engine/executor.py): P stage actors and a sink actor, long-lived, so several
    videos can run on the same stages. Calls return ObjectRefs; the stages of one tick run in parallel."""

    def __init__(self, config: Config):
        cfg = config.pipeline
        self.stages_count = cfg.stages
        threads = cfg.threads or max(1, round(cfg.num_cpus))
        stage_cls = ray.remote(Stage).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                              scheduling_strategy="SPREAD" if cfg.spread else "DEFAULT")
        bind = cfg.bind_cores and room_for_own_cores(cfg.stages * threads)
        self.stages = [stage_cls.remote(j, config.model, threads, bind_cores=bind) for j in range(cfg.stages)]
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        sink_cls = ray.remote(concurrency_groups={Sink.SUBSCRIBERS: 8})(Sink)
        self.sink = sink_cls.options(num_cpus=0, scheduling_strategy=here).remote()  # writes files on this node
        # The sink's encoding is off the critical path (ticks run ahead of it): it yields the cores to the stages.
        self.sink.__ray_call__.remote(lambda sink: os.nice(SINK_NICENESS))
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
        except BaseException:  # e.g. a stage placed on a node that died before the cluster knew it
            self.shutdown()
            raise
        self.latent_shape = shapes[0]
        if cfg.parallel == "context" and cfg.stages > 1:
            self.form_group(cfg.collective_timeout)

    def form_group(self, timeout: float) -> None:
        """The stages' process group for joint calls: stage 0 names a meeting place, then all join at once."""
        first = self.stages[0]
        address = ray.get(first.__ray_call__.remote(lambda stage: ray.util.get_node_ip_address()))
        port = ray.get(first.free_port.remote())
        try:
            ray.get([stage.join.remote(address, port, len(self.stages), timeout) for stage in self.stages])
        except BaseException:
            self.shutdown()
            raise

    def open(self, stream, config, size, prompts, workdir, resume) -> None:
        unwrap_get(self.sink.open.remote(stream, config, size, prompts, workdir, resume))

    def revise(self, stream, config, size, prompts) -> None:
        self.sink.revise.remote(stream, config, size, prompts)  # in order with the writes that follow

    def start(self, stream, seed, geometry, shares) -> list:
        return [stage.start.remote(stream, seed, geometry, share)
                for stage, share in zip(self.stages, shares, strict=True)]

    def tick(self, plans, peers) -> list[tuple[Any, Any, Any]]:
        return [stage.tick.options(num_returns=3).remote(plan, *sources)
                for stage, plan, sources in zip(self.stages, plans, peers, strict=True)]

    def write(self, emitted):
        return self.sink.write.remote(*emitted)

    def save_checkpoint(self, stream, uri, keep, next_tick, meta, published) -> int:
        return unwrap_get(self.sink.save_checkpoint.remote(stream, uri, keep, next_tick, meta, *published))

    def finish(self, stream) -> str:
        return unwrap_get(self.sink.finish.remote(stream))

    def abort(self, stream, timeout) -> None:
        ray.get(self.sink.abort.remote(stream), timeout=timeout)

    def drop(self, stream) -> None:
        for stage in self.stages:
            stage.drop.remote(stream)

    def get(self, refs):
        return ray.get(refs)

    def died(self, err: BaseException) -> bool:
        return stage_died(err)

    def cause(self, err: Exception) -> Exception:
        return remote_cause(err)

    def _subscribe(self, stream, index, timeout):
        return self.sink.frames_since.options(concurrency_group=Sink.SUBSCRIBERS).remote(stream, index, timeout)

    def recent_frames(self, stream, index, timeout):
        return unwrap_get(self._subscribe(stream, index, timeout))

    async def frames_since(self, stream, index, timeout):
        return await self._subscribe(stream, index, timeout)

    def shutdown(self) -> None:
        for actor in [*self.stages, self.sink]:
            ray.kill(actor)


def run_on_ray(config: Config, queue: JobQueue, metrics: PipelineMetrics, bar: tqdm | None = None,
               on_pipeline: Callable[[Pipeline | None], None] = lambda pipeline: None) -> int:
    """Run every job of `queue` on Ray (a session, P stage actors, a sink actor) until it is closed and empty.
    When a stage or the sink dies the pipeline is rebuilt and the jobs on it continue from their last
    checkpoints, up to recovery.max_restarts times. on_pipeline hears of every pipeline built (and of None
    when it goes). Returns the number of restarts."""
    restarts = 0
    with ray_session(config.pipeline):
        config = with_stage_cpus(config)
        check_resources(config.pipeline)
        metrics.serve(config.metrics.host, config.metrics.port)
        try:
            while True:
                pipeline = None
                try:
                    pipeline = Pipeline(config)  # a stage may die while starting too: recovered alike
                    on_pipeline(pipeline)
                    Engine(pipeline, config, metrics, bar).run(queue)
                    return restarts
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
                    if pipeline is not None:
                        on_pipeline(None)
                        pipeline.shutdown()
        finally:
            metrics.close()
