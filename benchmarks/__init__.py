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
