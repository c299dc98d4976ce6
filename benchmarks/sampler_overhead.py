"""Reference sampler frames/s against the pure model-forward bound (the same backend calls timed alone).

    python benchmarks/sampler_overhead.py [--seconds 20] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import statistics
import time

import torch

from actors.backends.base import PromptEncodings
from actors.backends.factory import build_backend, frame_count
from benchmarks import timing_parser
from benchmarks.bench_model import bench_config, temp_bench_model
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.engine.plan import plan_video


def run_sampler(backend, config, video, calls: list | None) -> float:
    """Seconds for the whole sampler run, decode included; records every call's inputs if asked."""
    encodings = PromptEncodings(backend)
    velocity = backend.velocity
    if calls is not None:
        def velocity(x, sigma, cond):
            calls.append((x.clone(), sigma.clone(), cond))
            return backend.velocity(x, sigma, cond)
    chunk_shape = (backend.latent_shape[0], video.geometry.chunk, *backend.latent_shape[1:])
    decoder = backend.codec.decoder()
    start = time.perf_counter()
    for _, x in sample(velocity, video.geometry, video.num_chunks, NoiseSource(0, chunk_shape),
                       lambda m: encodings.get(video.prompts.of(m)), partition=video.partition):
        decoder.decode(x)
    return time.perf_counter() - start


def run_forward_bound(backend, calls) -> float:
    """Seconds for the same model calls replayed on their recorded inputs, nothing else."""
    start = time.perf_counter()
    for x, sigma, cond in calls:
        backend.velocity(x, sigma, cond)
    return time.perf_counter() - start


def main() -> None:
    args = timing_parser(__doc__, seconds=20.0, threads=2).parse_args()
    torch.set_num_threads(args.threads)
    config = bench_config(temp_bench_model(), args.seconds)
    backend = build_backend(config.model)
    video = plan_video(config, frame_count(config.model))
    calls: list = []
    run_sampler(backend, config, video, calls)  # warm-up, and the recorded calls
    sampler_s, bound_s = [], []
    for _ in range(args.repeats):
        sampler_s.append(run_sampler(backend, config, video, None))
        bound_s.append(run_forward_bound(backend, calls))
    sampler, bound = statistics.median(sampler_s), statistics.median(bound_s)
    print(f"video: {video.size.frames} frames, {len(calls)} model calls, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"reference sampler: {video.size.frames / sampler:8.2f} frames/s ({sampler:.2f} s)")
    print(f"forward bound:     {video.size.frames / bound:8.2f} frames/s ({bound:.2f} s)")
    print(f"ratio (sampler / bound): {bound / sampler:.3f}")


if __name__ == "__main__":
    main()
