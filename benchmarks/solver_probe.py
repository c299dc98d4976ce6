"""The shipped model's quality per solver and step count: the probe's metrics over whole one-minute videos.

    python -m benchmarks.solver_probe [--seconds 60] [--seeds 0 1] [--runs euler:12 euler:8 dpmpp_2m:8 ...]

Each run (`solver:S`) makes the evaluation's five prompts' videos for every seed with the shipped model at its
default config but for `schedule.solver` and `schedule.steps`, in this process on every core, and scores every 2-s
segment with the world's probe (EVALUATION.md). It prints, per run, the mean of each metric over the videos (each
video's mean over its segments) and the model calls per video, which set its time (guidance doubles each call's
work whatever the solver); then, per later run, each metric's difference from the first run, video by video (the
same prompt and seed), with the half-width of its 95 % interval over the videos.
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np

from actors.backends.factory import build_backend, frame_count
from orchestrator.core.schedule import total_ticks
from orchestrator.engine.plan import plan_video
from orchestrator.state.settings import load_config
from training.evaluation.videos import METRICS, PROMPTS, render_frames, world_scenes
from training.world.probe import score_video


def video_means(segments: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over a video's segments (NaN segments, with nothing to measure, left out)."""
    return {m: float(np.nanmean([s[m] for s in segments])) if any(not math.isnan(s[m]) for s in segments)
            else math.nan for m in METRICS}


def probe_run(solver: str, steps: int, seconds: float, seeds: list[int], backend=None):
    """Per video the metric means, and the model calls of one video; the backend is built once and reused."""
    scenes = world_scenes(list(PROMPTS))
    means = []
    for prompt in PROMPTS:
        for seed in seeds:
            config = load_config([], [f"schedule.solver={solver}", f"schedule.steps={steps}", "pipeline.stages=0"],
                                 model="tiny")
            config.prompts, config.seconds, config.seed = [prompt], seconds, seed
            backend = backend or build_backend(config.model)
            means.append(video_means(score_video(render_frames(config, backend), scenes[prompt], config.fps)))
    plan = plan_video(config, frame_count(config.model))
    return means, total_ticks(plan.geometry, plan.num_chunks), backend


def interval(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95 % interval (normal approximation) over the values that are not NaN."""
    kept = [v for v in values if not math.isnan(v)]
    if len(kept) < 2:
        return (kept[0] if kept else math.nan), math.nan
    return statistics.mean(kept), 1.96 * statistics.stdev(kept) / math.sqrt(len(kept))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", nargs="+", default=["euler:12", "euler:8", "dpmpp_2m:8", "dpmpp_3m:8",
                                                       "dpmpp_2m:4"], help="solver:steps pairs")
    args = parser.parse_args()
    print(f"{len(PROMPTS)} prompts x seeds {args.seeds}, {args.seconds:g}-s videos; means over the videos")
    print("| solver | S | model calls | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    backend, runs = None, {}
    for run in args.runs:
        solver, steps = run.split(":")
        runs[run], calls, backend = probe_run(solver, int(steps), args.seconds, args.seeds, backend)
        print(f"| `{solver}` | {steps} | {calls} | "
              + " | ".join(f"{interval([m[metric] for m in runs[run]])[0]:.3f}" for metric in METRICS) + " |",
              flush=True)
    first, *later = args.runs
    print(f"\ndifference from {first}, video by video: mean ± 95 % half-width")
    print("| run | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for run in later:
        cells = [interval([b[m] - a[m] for a, b in zip(runs[first], runs[run], strict=True)]) for m in METRICS]
        print(f"| `{run}` | " + " | ".join(f"{mean:+.3f} ± {half:.3f}" for mean, half in cells) + " |")


if __name__ == "__main__":
    main()
