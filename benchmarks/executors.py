"""The two executors on the shipped model at its default config: frames/s, where a tick's time goes, first frame.

    python -m benchmarks.executors rate        [--seconds 60] [--repeats 3] [--threads 0]
    python -m benchmarks.executors first-frame [--repeats 3]

rate: one video at a time, alternating the in-process executor and a one-stage Ray pipeline built once (the same
torch threads in both, 0 = every core), after a warm-up run of each; medians of frames/s, their ratio, and the
time per tick beyond the model call (wall time of a tick minus its model call, from the engine's metrics).
first-frame: `pavdm generate --seconds 4` as a user starts it, in a new process each time, in process and with
`pipeline.executor=ray`: seconds from the start of the command to the first-frame line, and to its end.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import start_ray, timing_parser
from orchestrator.core.config import Config
from orchestrator.engine.executor import Executor
from orchestrator.engine.local import InProcessExecutor, process_threads
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.runner import run_video
from orchestrator.state.runs import RunFolder
from orchestrator.state.settings import load_config

MODEL = "tiny"
FIRST_FRAME_SECONDS = 4.0


def shipped_config(seconds: float, threads: int, executor: str) -> Config:
    """The shipped model at its default config, with fresh outputs under a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="pavdm-bench-"))
    return load_config([], [f"seconds={seconds}", f"pipeline.threads={threads}", f"pipeline.executor={executor}",
                            f"pipeline.num_cpus={threads}", "metrics.port=0", f"run.root={folder / 'runs'}",
                            f"output.out={folder / 'v.mp4'}"], model=MODEL)


def timed_video(executor: Executor, config: Config) -> tuple[float, float, int]:
    """(seconds, model-call seconds summed over the stages, ticks) of one video on a built executor."""
    metrics = PipelineMetrics("bench", 1)
    started = time.perf_counter()
    run_video(executor, config, RunFolder.create(config), metrics)
    seconds = time.perf_counter() - started
    calls = metrics.registry.get_sample_value("pavdm_stage_call_duration_seconds_sum",
                                              {"run_id": "bench", "stage": "0"})
    ticks = metrics.registry.get_sample_value("pavdm_ticks_total", {"run_id": "bench"})
    return seconds, calls, int(ticks)


def rate(args) -> None:
    import ray

    from orchestrator.engine.ray_pipeline import Pipeline

    threads = process_threads(args.threads)
    configs = {"in process": shipped_config(args.seconds, threads, "process"),
               "Ray, one stage": shipped_config(args.seconds, threads, "ray")}
    start_ray(threads)
    try:
        executors = {"in process": InProcessExecutor(configs["in process"]),
                     "Ray, one stage": Pipeline(configs["Ray, one stage"])}
        runs: dict[str, list[tuple[float, float, int]]] = {label: [] for label in executors}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for label, executor in executors.items():
                result = timed_video(executor, shipped_config(args.seconds, threads, configs[label].pipeline.executor))
                if repeat:
                    runs[label].append(result)
        frames = round(args.seconds * configs["in process"].fps)
        print(f"{MODEL}, default config, {frames} frames, {threads} torch threads, median of {args.repeats} runs")
        fps = {}
        for label, results in runs.items():
            fps[label] = frames / statistics.median(r[0] for r in results)
            beyond = statistics.median((r[0] - r[1]) / r[2] for r in results)
            print(f"  {label:16s} {fps[label]:6.2f} frames/s; beyond the model call {1000 * beyond:5.1f} ms per tick; "
                  f"runs {', '.join(f'{r[0]:.1f}s' for r in results)}")
        print(f"  ratio Ray / in process: {fps['Ray, one stage'] / fps['in process']:.3f}")
    finally:
        ray.shutdown()


def first_frame(args) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    results: dict[str, list[tuple[float, float]]] = {"in process": [], "Ray, one stage": []}
    for _ in range(args.repeats):
        for label, extra in (("in process", []), ("Ray, one stage", ["pipeline.executor=ray"])):
            with tempfile.TemporaryDirectory(prefix="pavdm-bench-") as folder:
                started = time.perf_counter()
                process = subprocess.Popen(
                    [sys.executable, "-m", "orchestrator.entry.cli", "generate", "--model", MODEL, "--seconds",
                     str(FIRST_FRAME_SECONDS), "--out", "v.mp4", "metrics.port=0", *extra],
                    cwd=folder, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
                first = None
                for line in process.stderr:
                    if first is None and line.startswith("first frame after"):
                        first = time.perf_counter() - started
                process.wait()
                if process.returncode or first is None:
                    sys.exit(f"{label}: the run failed or never reported its first frame")
                results[label].append((first, time.perf_counter() - started))
    print(f"`pavdm generate --model {MODEL} --seconds {FIRST_FRAME_SECONDS:g}`, median of {args.repeats} runs each")
    for label, runs in results.items():
        print(f"  {label:16s} first frame {statistics.median(r[0] for r in runs):5.1f} s after the start, "
              f"done after {statistics.median(r[1] for r in runs):5.1f} s")


def main() -> None:
    parser = timing_parser(__doc__, seconds=60.0, threads=0)
    parser.add_argument("which", choices=["rate", "first-frame"])
    args = parser.parse_args()
    {"rate": rate, "first-frame": first_frame}[args.which](args)


if __name__ == "__main__":
    main()
