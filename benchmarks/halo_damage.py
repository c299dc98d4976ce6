"""What a halo does to the video: the oracle's exact statistics for every partition, against the truth.

    python -m benchmarks.halo_damage [--stages 2 3 6] [--halos 0 1 2] [--steps 36] [--chunks 60]

prints a Markdown table (EVALUATION.md, "Halo damage") of the frame variance and the lag-1..3 correlations of the
video the reference sampler makes with each partition (P stages, halo h) on the analytic oracle (rho = 0.9, C = 2,
N = 6, K = 1, shift 1, Euler), computed exactly as in benchmarks/solver_steps.py. Context mode (pipeline.parallel =
context) computes the whole window's call for every P, so its row is plain PA-VDM's (P = 1).
"""

from __future__ import annotations

import argparse

from benchmarks.solver_steps import RHO, oracle_statistics
from orchestrator.core.partition import Partition


def row(name: str, var: float, lags: list[float]) -> str:
    return f"| {name} | {' / '.join(f'{lag:.3f}' for lag in lags)} | {var:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3, 6])
    parser.add_argument("--halos", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--chunks", type=int, default=60)
    args = parser.parse_args()
    print("| partition | lag-1 / lag-2 / lag-3 correlation | variance |")
    print("|---|---|---|")
    print(row("truth", 1.0, [RHO**k for k in (1, 2, 3)]))
    print(row("P = 1 (plain PA-VDM); context mode, any P", *oracle_statistics(args.steps, chunks=args.chunks)))
    for stages in args.stages:
        for halo in args.halos:
            stats = oracle_statistics(args.steps, chunks=args.chunks, partition=Partition(stages, halo))
            print(row(f"P = {stages}, h = {halo}", *stats))


if __name__ == "__main__":
    main()
