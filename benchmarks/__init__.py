"""Reproducible benchmark scripts; results in BENCHMARKS.md."""
