"""A video made on the Ray pipeline, its frames relayed from the sink actor to an iterator in the caller's thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator

import torch

from orchestrator.core.config import Config
from orchestrator.core.errors import RunFailed, UserError
from orchestrator.engine.jobs import JobQueue
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.runner import finished, one_job, run_jobs
from orchestrator.entry.generate import new_run

AHEAD = 4  # batches of frames the pipeline may make ahead of a caller that reads slowly; then it waits
END = object()


def ray_frames(config: Config, progress: bool) -> Generator[tuple[int, torch.Tensor], None, None]:
    """A new run of `config` on the Ray pipeline, driven from a thread of this process; yields (index of the first
    frame, uint8 frames [f, H, W, 3] at model size) as the sink writes them, every frame once, in order. Closing
    the iterator suspends the run at its next shift boundary: checkpointed, 'interrupted' and resumable."""
    run = new_run(config)
    batches: queue.Queue = queue.Queue(AHEAD)
    stop = threading.Event()
    executors: list = []  # the executor built (again, after a failure) for the job
    failures: list[BaseException] = []

    def put(item: object) -> None:
        """Hand an item to the caller, waiting while it is AHEAD behind; dropped once it has stopped reading."""
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    with one_job(config, run, progress) as (job, bar):
        count, sent = job.on_frames, 0
        jobs = JobQueue(iter([job]), closed=True)

        def relay(written: int) -> None:  # on the engine's thread, after every tick that wrote frames
            nonlocal sent
            count(written)
            if sent >= written or stop.is_set():
                return  # nothing new (a rebuilt pipeline makes again what followed its checkpoint), or no reader
            frames, _ = executors[-1].recent_frames(job.id, sent, 0.0)
            if not frames or frames[0][0] != sent:
                raise RunFailed(f"frames from {sent} on left the sink's buffer before they were read")
            put((sent, torch.stack([frame for _, frame in frames])))
            sent = frames[-1][0] + 1

        def work() -> None:
            try:
                run_jobs(config, jobs, PipelineMetrics(run.run_id, config.pipeline.stages), bar,
                         on_executor=executors.append)
                finished(job)
            except UserError as err:
                run.discard_if_unused(run.checkpoints(config))  # bad input found late (e.g. resources)
                failures.append(err)
            except BaseException as err:
                failures.append(err)
            finally:
                put(END)

        job.on_frames = relay
        worker = threading.Thread(target=work, name="pavdm-ray", daemon=True)
        worker.start()
        try:
            while (item := batches.get()) is not END:
                yield item
            if failures:
                raise failures[0]
        finally:
            stop.set()
            jobs.suspend()
            worker.join()
