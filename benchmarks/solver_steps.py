"""Steps for equal quality: the oracle's frame variance and lag errors against S for every solver and eta.

    python -m benchmarks.solver_steps [--steps 6 12 18 24 30 36 48 60] [--shift 1.0] [--etas 0 0.5 1]
                                      [--plot solvers.png]

prints, for every solver and eta, the frame variance and the lag-1..3 correlation errors at each S, and the
smallest S at which the variance is within 2% of 1 and every lag within 0.005 of the truth (rho^k).

The oracle (actors/backends/gaussian.py, white spectrum, rho = 0.9) is linear in its noise, and so is every step of
every solver, so these are the exact expectations of the sample statistics of tests/test_gaussian_oracle.py, not
estimates: every noise draw of a video (its chunks' noise and its steps' fresh noise) is a unit impulse on a channel
of its own, so channel i of the generated video is its response to draw i, and the frames' covariance is the sum of
the responses' products over the channels. Window: C = 2, N = 6, K = 1, one stage; the statistics are averaged over
the frames of a steady window (the first and last `skip` chunks, filling and draining, left out).
"""

from __future__ import annotations

import argparse
from typing import get_args

import torch

from actors.backends.gaussian import GaussianProcessBackend
from orchestrator.core.config import ModelConfig, ScheduleConfig, Solver
from orchestrator.core.partition import Partition
from orchestrator.core.sampler import sample
from orchestrator.core.schedule import Geometry, ticks

RHO = 0.9
VARIANCE_TOLERANCE, LAG_TOLERANCE = 0.02, 0.005


class Impulses:
    """A NoiseSource whose every draw is a unit impulse on channels of its own: [inputs, C, 1, 1] tensors."""

    def __init__(self, geometry: Geometry, num_chunks: int):
        noisy_steps = sum(1 for t in ticks(geometry, num_chunks) for u in t.noisy if u.level_after)
        draws = num_chunks + (noisy_steps if geometry.stochasticity else 0)
        self.chunk_shape = (draws * geometry.chunk, geometry.chunk, 1, 1)
        self.drawn = 0

    def _draw(self) -> torch.Tensor:
        frames = self.chunk_shape[1]
        x = torch.zeros(self.chunk_shape)  # [inputs, C, 1, 1]
        x[self.drawn + torch.arange(frames), torch.arange(frames)] = 1
        self.drawn += frames
        return x

    def chunk(self, m: int) -> torch.Tensor:
        return self._draw()

    def step(self, tick: int, m: int) -> torch.Tensor:
        return self._draw()


def oracle_statistics(steps: int, solver: str = "euler", eta: float = 0.0, shift: float = 1.0, chunks: int = 60,
                      skip: int = 8, partition: Partition | None = None) -> tuple[float, list[float]]:
    """Exact frame variance and lag-1..3 correlations of a video of `chunks` chunks, over its steady frames, made
    by the reference sampler with `partition` (None: plain PA-VDM)."""
    backend = GaussianProcessBackend(ModelConfig(channels=1, height=1, width=1, rho=RHO))
    geometry = Geometry.from_config(ScheduleConfig(chunk=2, noisy_chunks=6, steps=steps, context_chunks=1,
                                                   shift=shift, stochasticity=eta, solver=solver))
    noise = Impulses(geometry, chunks)
    responses = torch.cat([x for _, x in sample(backend.velocity, geometry, chunks, noise, lambda m: None,
                                                partition=partition)], dim=1)
    assert noise.drawn == noise.chunk_shape[0], "every draw is an input"
    responses = responses[:, :, 0, 0].double()  # [inputs, F]
    cov = responses.T @ responses  # [F, F]: the frames' exact covariance
    steady = range(skip * geometry.chunk, cov.shape[0] - skip * geometry.chunk)
    var = cov.diagonal()[steady.start : steady.stop].mean().item()
    lags = [cov.diagonal(k)[steady.start : steady.stop].mean().item() / var for k in (1, 2, 3)]
    return var, lags


def errors(var: float, lags: list[float]) -> tuple[float, list[float]]:
    """(variance - 1, lag_k - rho^k for k = 1..3)."""
    return var - 1, [lag - RHO**k for k, lag in enumerate(lags, start=1)]


def within(var: float, lags: list[float]) -> bool:
    var_error, lag_errors = errors(var, lags)
    return abs(var_error) <= VARIANCE_TOLERANCE and all(abs(e) <= LAG_TOLERANCE for e in lag_errors)


def plot(results: dict[tuple[str, float], dict[int, tuple[float, list[float]]]], path: str) -> None:
    """Two panels against S, a colour per solver and a dash per eta: the frame variance's error and the lag-1 error,
    with the tolerances shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (var_ax, lag_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = {solver: f"C{i}" for i, solver in enumerate(dict.fromkeys(solver for solver, _ in results))}
    lines = dict(zip(dict.fromkeys(eta for _, eta in results), ["-", "--", ":", "-."], strict=False))
    for (solver, eta), by_steps in results.items():
        steps = sorted(by_steps)
        errs = [errors(*by_steps[s]) for s in steps]
        style = {"label": f"{solver}, eta {eta:g}", "marker": "o", "markersize": 3, "color": colours[solver],
                 "linestyle": lines[eta]}
        var_ax.plot(steps, [e[0] for e in errs], **style)
        lag_ax.plot(steps, [e[1][0] for e in errs], **style)
    for ax, tolerance, name in ((var_ax, VARIANCE_TOLERANCE, "variance - 1"), (lag_ax, LAG_TOLERANCE, "lag-1 error")):
        ax.axhspan(-tolerance, tolerance, color="0.9")
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_xlabel("S (steps per chunk)")
        ax.set_ylabel(name)
    lag_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[6, 12, 18, 24, 30, 36, 48, 60],
                        help="values of S, multiples of N = 6")
    parser.add_argument("--shift", type=float, default=1.0, help="time shift of the level grid (default 1)")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="schedule.stochasticity")
    parser.add_argument("--plot", metavar="PNG", help="also draw the errors against S into this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"oracle rho={RHO}, C=2, N=6, K=1, shift={args.shift:g}: variance - 1 | lag-1, -2, -3 errors "
          f"(* = within {VARIANCE_TOLERANCE:.0%} and {LAG_TOLERANCE})\n")
    print("| solver | eta | " + " | ".join(f"S={s}" for s in args.steps) + " | smallest S |")
    print("|---|---|" + "---|" * len(args.steps) + "---|")
    results = {}
    for solver in get_args(Solver):
        for eta in args.etas:
            by_steps = results[solver, eta] = {s: oracle_statistics(s, solver, eta, args.shift) for s in args.steps}
            cells, smallest = [], None
            for steps, (var, lags) in by_steps.items():
                var_error, lag_errors = errors(var, lags)
                ok = within(var, lags)
                smallest = smallest or (steps if ok else None)
                cells.append(f"{var_error:+.3f} \\| " + " ".join(f"{e:+.4f}" for e in lag_errors) + ("*" if ok else ""))
            print(f"| {solver} | {eta:g} | " + " | ".join(cells) + f" | {smallest or '>' + str(args.steps[-1])} |",
                  flush=True)
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot in {args.plot}")


if __name__ == "__main__":
    main()
