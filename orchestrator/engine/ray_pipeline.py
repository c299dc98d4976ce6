"""The control plane on Ray: builds the stage and sink actors and keeps a queue of jobs running on them."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from actors.sink import Sink
from actors.stage import Stage
from orchestrator.core.config import Config, PipelineConfig
from orchestrator.core.errors import RunFailed, UserError
from orchestrator.core.partition import Partition
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import frame_progress
from orchestrator.engine.ray_engine import Engine
from orchestrator.engine.ray_errors import remote_cause, stage_died
from orchestrator.state.runs import RunFolder

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(cfg: PipelineConfig) -> Iterator[None]:
    """Join pipeline.ray_address or RAY_ADDRESS, else start a local cluster of our own (never one that `ray start`
    left on this machine); stop only what we started."""
    if ray.is_initialized():
        yield
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"
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


class Pipeline:
    """P stage actors and a sink actor; long-lived, so several videos can run on the same stages."""

    def __init__(self, config: Config):
        cfg = config.pipeline
        self.stages_count = cfg.stages
        threads = cfg.threads or max(1, round(cfg.num_cpus))
        stage_cls = ray.remote(Stage).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                              scheduling_strategy="SPREAD" if cfg.spread else "DEFAULT")
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
        except BaseException:  # e.g. a stage placed on a node that died before the cluster knew it
            self.shutdown()
            raise
        self.latent_shape = shapes[0]
        if cfg.parallel == "context" and cfg.stages > 1:
            self.form_group(cfg.collective_timeout)

    def form_group(self, timeout: float) -> None:
        """The stages' process group for joint calls: stage 0 names a meeting place, then all join at once."""
        address, port = ray.get(self.stages[0].rendezvous.remote())
        try:
            ray.get([stage.join.remote(address, port, len(self.stages), timeout) for stage in self.stages])
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        for actor in [*self.stages, self.sink]:
            ray.kill(actor)


def run_jobs(config: Config, queue: JobQueue, metrics: PipelineMetrics, bar: tqdm | None = None,
             on_pipeline: Callable[[Pipeline | None], None] = lambda pipeline: None) -> int:
    """Run every job of `queue` on one pipeline (Ray session, P stages, a sink) until it is closed and empty.
    When a stage or the sink dies the pipeline is rebuilt and the jobs on it continue from their last
    checkpoints, up to recovery.max_restarts times. on_pipeline hears of every pipeline built (and of None
    when it goes). Returns the number of restarts."""
    restarts = 0
    pipe = config.pipeline
    note = Partition.from_config(pipe.stages, pipe.halo, config.schedule.noisy_chunks, pipe.parallel
                                 ).approximation_note()
    if note:
        log.warning(note)
    with ray_session(config.pipeline):
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


@contextlib.contextmanager
def one_job(config: Config, run: RunFolder, progress: bool) -> Iterator[tuple[StreamJob, tqdm]]:
    """The job of one video, with a frame progress bar that follows it."""
    job = StreamJob(config, run)
    with frame_progress(0, progress) as bar:

        def on_frames(frames: int) -> None:
            bar.total = job.frames_total
            bar.update(frames - bar.n)

        job.on_frames = on_frames
        yield job, bar


def run_video(pipeline: Pipeline, config: Config, run: RunFolder, metrics: PipelineMetrics,
              progress: bool = False) -> StreamJob:
    """One video on built stages, from the run's newest valid checkpoint or from the start."""
    with one_job(config, run, progress) as (job, bar):
        Engine(pipeline, config, metrics, bar).run(JobQueue([job], closed=True))
    return finished(job)


def finished(job: StreamJob) -> StreamJob:
    """The job, or its error raised."""
    if job.error is not None:
        raise job.error
    return job


def run_pipeline(config: Config, run: RunFolder, progress: bool) -> tuple[StreamJob, int]:
    """The CLI path: one job through run_jobs. Returns (the finished job, restarts)."""
    with one_job(config, run, progress) as (job, bar):
        restarts = run_jobs(config, JobQueue([job], closed=True), PipelineMetrics(run.run_id, config.pipeline.stages),
                            bar)
    return finished(job), restarts
