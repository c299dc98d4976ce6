"""Which executor runs a queue of jobs (in process or on Ray), and the queue run on it to its end."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Generator, Iterator

from tqdm import tqdm

from actors.backends.base import Backend
from actors.backends.factory import build_backend
from orchestrator.core.config import Config, ModelConfig, PipelineConfig
from orchestrator.core.partition import Partition
from orchestrator.core.schedule import Tick
from orchestrator.engine.engine import Engine
from orchestrator.engine.executor import Executor
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.local import InProcessExecutor, WrittenChunk, run_to_end
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import frame_progress
from orchestrator.engine.steering import Steering
from orchestrator.state.runs import RunFolder

log = logging.getLogger(__name__)
BackendOf = Callable[[ModelConfig], Backend]
OnExecutor = Callable[[Executor | None], None]


def uses_ray(cfg: PipelineConfig) -> bool:
    """pipeline.executor, where 'auto' means Ray only for what needs it: more than one stage, GPUs reserved per
    stage, or a cluster named (pipeline.ray_address or RAY_ADDRESS); else this process, with no Ray to start."""
    if cfg.executor != "auto":
        return cfg.executor == "ray"
    return cfg.stages > 1 or cfg.num_gpus > 0 or bool(cfg.ray_address or os.environ.get("RAY_ADDRESS"))


def job_steps(config: Config, queue: JobQueue, metrics: PipelineMetrics, bar: tqdm | None = None,
              on_executor: OnExecutor = lambda executor: None, backend_of: BackendOf = build_backend,
              keep_chunks: bool = False) -> Generator[WrittenChunk, None, int]:
    """Run every job of `queue` until it is closed and empty, on the executor `config` asks for; on_executor hears
    of every executor built (and of None when it goes). In process, with keep_chunks, yields every chunk once
    written; backend_of loads the in-process model. Returns the number of pipeline restarts (Ray only)."""
    note = Partition.of_pipeline(config.pipeline, config.schedule.noisy_chunks).approximation_note()
    if note:
        log.warning(note)
    if uses_ray(config.pipeline):
        from orchestrator.engine.ray_pipeline import run_on_ray

        return run_on_ray(config, queue, metrics, bar, on_executor)
    executor = InProcessExecutor(config, backend_of, keep_chunks)
    metrics.serve(config.metrics.host, config.metrics.port)
    try:
        on_executor(executor)
        for _ in Engine(executor, config, metrics, bar).steps(queue):
            if keep_chunks:
                yield from executor.sink.take()
        return 0
    finally:
        on_executor(None)
        executor.shutdown()
        metrics.close()


def run_jobs(config: Config, queue: JobQueue, metrics: PipelineMetrics, bar: tqdm | None = None,
             on_executor: OnExecutor = lambda executor: None, backend_of: BackendOf = build_backend) -> int:
    """job_steps to its end: the number of pipeline restarts."""
    return run_to_end(job_steps(config, queue, metrics, bar, on_executor, backend_of))


@contextlib.contextmanager
def one_job(config: Config, run: RunFolder, progress: bool, steering: Steering | None = None
            ) -> Iterator[tuple[StreamJob, tqdm]]:
    """The job of one video (steered by `steering`, if given), with a frame progress bar that follows it."""
    job = StreamJob(config, run, steering=steering or Steering())
    with frame_progress(0, progress) as bar:

        announced = not progress

        def on_frames(frames: int) -> None:
            nonlocal announced
            if not announced and job.first_frame_seconds is not None:
                bar.write(f"first frame after {job.first_frame_seconds:.1f} s", file=sys.stderr)  # beside the bar
                announced = True
            bar.total = job.frames_total
            bar.update(frames - bar.n)

        job.on_frames = on_frames
        yield job, bar


def finished(job: StreamJob) -> StreamJob:
    """The job, or its error raised."""
    if job.error is not None:
        raise job.error
    return job


def run_video(executor: Executor, config: Config, run: RunFolder, metrics: PipelineMetrics,
               progress: bool = False) -> StreamJob:
    """One video on an executor already built, from the run's newest valid checkpoint or from the start."""
    with one_job(config, run, progress) as (job, bar):
        Engine(executor, config, metrics, bar).run(JobQueue([job], closed=True))
    return finished(job)


def video_steps(config: Config, run: RunFolder, progress: bool, backend_of: BackendOf = build_backend,
                keep_chunks: bool = False, on_tick: Callable[[Tick], None] | None = None,
                steering: Steering | None = None) -> Generator[WrittenChunk, None, tuple[StreamJob, int]]:
    """One video as one job (see job_steps), on_tick hearing of its ticks, steered by `steering`. Returns (the
    finished job, restarts); raises its error."""
    with one_job(config, run, progress, steering) as (job, bar):
        job.on_tick = on_tick
        metrics = PipelineMetrics(run.run_id, max(config.pipeline.stages, 1))
        restarts = yield from job_steps(config, JobQueue([job], closed=True), metrics, bar,
                                        backend_of=backend_of, keep_chunks=keep_chunks)
    return finished(job), restarts
