"""Ray pipeline benchmarks: overhead vs the in-process executor, 2-stage scaling, per-tick overhead, flat memory.

    python -m benchmarks.pipeline overhead [--seconds 20] [--repeats 3] [--threads 1]
    python -m benchmarks.pipeline scaling  [--seconds 20] [--repeats 3] [--halo 1]
    python -m benchmarks.pipeline ticks    [--stages 4]
    python -m benchmarks.pipeline memory   [--frames 2000]
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import ray

from actors.backends.factory import build_backend, frame_count
from benchmarks import start_ray, timing_parser
from benchmarks.bench_model import bench_config, temp_bench_model
from orchestrator.core.config import Config, ModelConfig, ScheduleConfig
from orchestrator.core.schedule import total_ticks
from orchestrator.engine.local import InProcessExecutor
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import plan_video
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.engine.runner import run_video
from orchestrator.state.runs import RunFolder


def with_topology(config: Config, stages: int, halo, threads: int, num_cpus: float, parallel: str = "halo") -> Config:
    config.pipeline.stages, config.pipeline.halo, config.pipeline.parallel = stages, halo, parallel
    config.pipeline.threads, config.pipeline.num_cpus = threads, num_cpus
    config.output.out = str(Path(tempfile.mkdtemp(prefix="pavdm-bench-out-")) / "v.mp4")
    return config


def time_reference(config: Config, backend) -> float:
    """Seconds of one run with the in-process executor (model already loaded), MP4 writing included."""
    config.run.id, config.run.root = "", tempfile.mkdtemp(prefix="pavdm-bench-runs-")
    executor = InProcessExecutor(config, lambda model: backend)
    start = time.perf_counter()
    run_video(executor, config, RunFolder.create(config), PipelineMetrics("bench", 1))
    return time.perf_counter() - start


def run_once(pipeline: Pipeline, config: Config, metrics: PipelineMetrics) -> None:
    """One video on already-built stages, in a new run folder (checkpoints as configured)."""
    config.run.id, config.run.root = "", tempfile.mkdtemp(prefix="pavdm-bench-runs-")
    run_video(pipeline, config, RunFolder.create(config), metrics)


def time_pipeline(pipeline: Pipeline, config: Config) -> float:
    """Seconds of one run on already-built stages, MP4 writing (in the sink) included."""
    start = time.perf_counter()
    run_once(pipeline, config, PipelineMetrics("bench", config.pipeline.stages))
    return time.perf_counter() - start


def median_fps(frames: int, runs: list[float]) -> float:
    return frames / statistics.median(runs)


def live_processes(pids: list[int]) -> list[psutil.Process]:
    """The processes of these ids that are still running."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def runner_for(config: Config) -> Callable[[], float]:
    """One timed video of `config` per call: in process for pipeline.stages = 0, its model loaded once, now; else on
    Ray stages built for the run before the clock starts and ended after it (as `pavdm generate` does), so that
    pipelines taking turns never keep each other from their own cores (pipeline.bind_cores)."""
    if config.pipeline.stages == 0:
        backend = build_backend(config.model)
        return lambda: time_reference(config, backend)

    def run() -> float:
        pipeline = Pipeline(config)
        pids = ray.get([stage.pid.remote() for stage in pipeline.stages])
        try:
            return time_pipeline(pipeline, config)
        finally:
            pipeline.shutdown()
            psutil.wait_procs(live_processes(pids), timeout=30)

    return run


def compare(args, label_a: str, config_a: Config, label_b: str, config_b: Config) -> None:
    """Alternate runs of A and B; print medians and the ratio B / A in frames/s."""
    frames = round(config_a.seconds * config_a.fps)
    runners = {label: runner_for(config) for label, config in ((label_a, config_a), (label_b, config_b))}
    for run in runners.values():
        run()  # warm-up (of the in-process model; Ray stages are new for every run)
    times = {label: [] for label in runners}
    for _ in range(args.repeats):
        for label, run in runners.items():
            times[label].append(run())
    fps = {label: median_fps(frames, t) for label, t in times.items()}
    print(f"{frames} frames, median of {args.repeats} runs")
    for label in runners:
        print(f"  {label:38s} {fps[label]:7.2f} frames/s  runs: {', '.join(f'{t:.2f}s' for t in times[label])}")
    print(f"  ratio {label_b} / {label_a}: {fps[label_b] / fps[label_a]:.3f}")


def overhead(args) -> None:
    folder = temp_bench_model()
    reference = with_topology(bench_config(folder, args.seconds), 0, "all", args.threads, 0.5)
    ray_p1 = with_topology(bench_config(folder, args.seconds), 1, "all", args.threads, 0.5)
    compare(args, f"in process ({args.threads} thr)", reference, f"ray P=1 ({args.threads} thr)", ray_p1)


def scaling(args) -> None:
    folder = temp_bench_model()
    one = with_topology(bench_config(folder, args.seconds), 1, args.halo, 1, 1.0)
    two = with_topology(bench_config(folder, args.seconds), 2, args.halo, 1, 1.0)
    compare(args, f"ray P=1 h={args.halo} (1 thr)", one, f"ray P=2 h={args.halo} (1 thr each)", two)


def noop_config(seconds: float, stages: int) -> Config:
    config = Config(seconds=seconds, fps=24.0)
    config.model = ModelConfig(channels=1, height=2, width=2)
    config.schedule = ScheduleConfig(chunk=1, noisy_chunks=8, steps=8)
    return with_topology(config, stages, 1, 1, 0.25)


def ticks(args) -> None:
    config = noop_config(20.0, args.stages)
    plan = plan_video(config, frame_count(config.model))
    pipeline = Pipeline(config)
    time_pipeline(pipeline, config)
    metrics = PipelineMetrics("ticks", args.stages)
    start, cpu_start = time.perf_counter(), time.process_time()
    run_once(pipeline, config, metrics)
    wall, controller_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    count = total_ticks(plan.geometry, plan.num_chunks)
    calls = sum(metrics.call_seconds.labels("ticks", str(j))._sum.get() for j in range(args.stages))
    print(f"P={args.stages}, {count} ticks on a no-op-sized model (1x2x2 frames, gaussian)")
    print(f"  wall per tick: {1000 * wall / count:.2f} ms; controller CPU per tick: "
          f"{1000 * controller_cpu / count:.2f} ms; model calls per tick (sum over stages): "
          f"{1000 * calls / count:.2f} ms")


def memory(args) -> None:
    config = noop_config(args.frames / 24.0, 2)
    config.model = ModelConfig(channels=3, height=16, width=16)
    config.schedule = ScheduleConfig(chunk=2, noisy_chunks=4, steps=8)
    plan = plan_video(config, frame_count(config.model))
    pipeline = Pipeline(config)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def watch():
        me = psutil.Process()
        while not done.is_set():
            procs = [me] + [p for p in psutil.process_iter(["cmdline"])
                            if any("ray::Stage" in c or "ray::Sink" in c for c in (p.info["cmdline"] or []))]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            samples.append((time.perf_counter(), total))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_once(pipeline, config, PipelineMetrics("mem", 2))
    finally:
        done.set()
        watcher.join()
    quarter = len(samples) // 4
    first = max(rss for _, rss in samples[:quarter])
    last = max(rss for _, rss in samples[-quarter:])
    print(f"{plan.size.frames} frames, P=2: peak RSS (driver + stages + sink) first quarter {first / 2**20:.1f} MiB, "
          f"last quarter {last / 2**20:.1f} MiB, ratio {last / first:.3f}")


def main() -> None:
    parser = timing_parser(__doc__, seconds=20.0, threads=1)
    parser.add_argument("which", choices=["overhead", "scaling", "ticks", "memory"])
    parser.add_argument("--halo", type=int, default=1)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    start_ray()
    try:
        {"overhead": overhead, "scaling": scaling, "ticks": ticks, "memory": memory}[args.which](args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
