"""Context mode on CPU: speed against one stage, and what its collectives cost per tick.

    python -m benchmarks.context_parallel speed        [--seconds 60] [--repeats 1]
    python -m benchmarks.context_parallel collectives  [--seconds 10] [--stages 2 3 4]

`speed` makes the shipped model's video (its default config) three ways, models loaded before the clocks start:
the Ray pipeline with one stage on one thread, the Ray pipeline with two stages in context mode on one thread each,
and the in-process executor on two threads (the best single-stage use of two cores); it prints frames/s, the
ratios, and the largest difference between the two-stage and the one-stage latents (the same video: < 1e-4).
`collectives` runs the same model with P stages in context mode and prints, per tick and stage, the milliseconds
spent in collectives (waiting for the other stages included) and the bytes received in them.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import ray

from actors.backends.factory import frame_count
from benchmarks.pipeline import run_once, runner_for, with_topology
from orchestrator.core.config import Config
from orchestrator.core.schedule import total_ticks
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import plan_video
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.state.outputs import read_latents
from orchestrator.state.settings import load_config


def shipped(seconds: float, stages: int, threads: int, num_cpus: float) -> Config:
    """The shipped model at its default config, its latents written beside the MP4."""
    config = with_topology(load_config([], [f"seconds={seconds}", "metrics.port=0"], model="tiny"), stages, "all",
                           threads, num_cpus, parallel="context")
    config.output.latents_out = str(Path(config.output.out).with_suffix(".arrow"))
    return config


def speed(args) -> None:
    configs = {
        "ray P=1 (1 thread)": shipped(args.seconds, 1, 1, 0.5),
        "ray P=2 context (1 thread each)": shipped(args.seconds, 2, 1, 0.5),
        "in process (2 threads)": shipped(args.seconds, 0, 2, 0.5),
    }
    runners = {label: runner_for(config) for label, config in configs.items()}
    times = {label: [run() for _ in range(args.repeats)] for label, run in runners.items()}
    frames = round(args.seconds * next(iter(configs.values())).fps)
    fps = {label: frames / statistics.median(runs) for label, runs in times.items()}
    print(f"{frames} frames of the shipped model, median of {args.repeats} run(s), models loaded beforehand")
    for label, runs in times.items():
        print(f"  {label:34s} {fps[label]:6.2f} frames/s  runs: {', '.join(f'{t:.1f}s' for t in runs)}")
    one, two, local = (fps[label] for label in configs)
    print(f"  P=2 context / P=1: {two / one:.2f}x;  P=2 context / in process on 2 threads: {two / local:.2f}x")
    a, b = (read_latents(configs[label].output.latents_out) for label in list(configs)[:2])
    print(f"  largest |latent difference| P=2 context vs P=1: {(a - b).abs().max().item():.2e}")


def collectives(args) -> None:
    for stages in args.stages:
        config = shipped(args.seconds, stages, 1, 2 / stages)
        pipeline = Pipeline(config)
        try:
            metrics = PipelineMetrics("cp", stages)
            run_once(pipeline, config, metrics)
        finally:
            pipeline.shutdown()
        plan = plan_video(config, frame_count(config.model))
        count = total_ticks(plan.geometry, plan.num_chunks)
        seconds = [metrics.collective_seconds.labels("cp", str(j))._sum.get() for j in range(stages)]
        received = [metrics.collective_bytes.labels("cp", str(j))._value.get() for j in range(stages)]
        print(f"P={stages}: {count} ticks; per tick and stage: "
              f"{1000 * statistics.mean(seconds) / count:.1f} ms in collectives, "
              f"{statistics.mean(received) / count / 1024:.0f} KiB received")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_speed = sub.add_parser("speed")
    run_speed.add_argument("--seconds", type=float, default=60.0)
    run_speed.add_argument("--repeats", type=int, default=1)
    run_collectives = sub.add_parser("collectives")
    run_collectives.add_argument("--seconds", type=float, default=10.0)
    run_collectives.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        {"speed": speed, "collectives": collectives}[args.command](args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
