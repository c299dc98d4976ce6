"""Reproducible benchmark scripts; results in BENCHMARKS.md."""

from __future__ import annotations

import argparse


def timing_parser(doc: str, seconds: float, threads: int) -> argparse.ArgumentParser:
    """A parser with the options every timing benchmark takes: video length, torch threads, runs per median."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=seconds, help=f"video length (default {seconds:g})")
    parser.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs whose median is reported (default 3)")
    return parser


def start_ray(num_cpus: int | None = None) -> None:
    """A local Ray cluster set up as `pavdm` sets up its own: workers at the driver's priority (Ray's default
    niceness 15 would put the stages behind every other process), without Ray's record of tasks and its metrics."""
    import ray

    from orchestrator.engine.ray_pipeline import OWN_CLUSTER

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config=OWN_CLUSTER)
