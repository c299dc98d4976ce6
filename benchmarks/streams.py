"""Continuous batching: aggregate frames/s with 1, 2 and 4 concurrent streams through one pipeline.

    python -m benchmarks.streams [--seconds 20] [--repeats 3] [--streams 1 2 4] [--threads 2] [KEY=VALUE ...]

Every run starts the given number of videos (the embedded tiny model, different seeds) together on one
already-built pipeline (one stage) with pipeline.max_streams equal to that number, and times them until the
last one is written; frames/s counts the frames of all of them.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time

import ray

from benchmarks import start_ray, timing_parser
from orchestrator.core.config import Config
from orchestrator.engine.engine import Engine
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.state.runs import RunFolder
from orchestrator.state.settings import load_config


def jobs_for(base: Config, count: int) -> list[StreamJob]:
    root = tempfile.mkdtemp(prefix="pavdm-bench-streams-")
    jobs = []
    for seed in range(count):
        config = copy.deepcopy(base)
        config.seed, config.run.root, config.run.id = seed, root, f"s{seed}"
        config.prompts = [f"0:a {['red', 'green', 'blue', 'yellow'][seed % 4]} circle bouncing"]
        jobs.append(StreamJob(config, RunFolder.create(config)))
    return jobs


def time_streams(pipeline: Pipeline, base: Config, count: int) -> tuple[float, int]:
    """(wall seconds, frames written) of `count` videos run together."""
    jobs = jobs_for(base, count)
    start = time.perf_counter()
    Engine(pipeline, base, PipelineMetrics("bench", 1)).run(JobQueue(jobs, closed=True))
    seconds = time.perf_counter() - start
    assert all(job.out is not None for job in jobs), [job.error for job in jobs]
    return seconds, sum(job.frames_total for job in jobs)


def main() -> None:
    parser = timing_parser(__doc__, seconds=20.0, threads=2)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. output.scale=1")
    args = parser.parse_args()
    base = load_config([], [f"seconds={args.seconds}", "metrics.port=0", "pipeline.stages=1",
                            f"pipeline.threads={args.threads}", "pipeline.num_cpus=1",
                            "checkpoint.every_shifts=20", *args.overrides], model="tiny")
    start_ray(2)
    try:
        rates = {}
        for count in args.streams:
            config = copy.deepcopy(base)
            config.pipeline.max_streams = count
            pipeline = Pipeline(config)
            try:
                time_streams(pipeline, config, 1)  # warm-up: model, prompt encodings, codec
                runs = [time_streams(pipeline, config, count) for _ in range(args.repeats)]
            finally:
                pipeline.shutdown()
            seconds = statistics.median(s for s, _ in runs)
            rates[count] = runs[0][1] / seconds
            print(f"{count} stream(s): {rates[count]:.2f} frames/s aggregate "
                  f"({runs[0][1]} frames; runs {', '.join(f'{s:.2f}' for s, _ in runs)} s)", flush=True)
        first = args.streams[0]
        for count in args.streams[1:]:
            print(f"{count} vs {first}: {rates[count] / rates[first]:.3f}x")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
