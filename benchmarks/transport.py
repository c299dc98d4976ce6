"""Per-tick transport cost of the two ways stages can exchange halos: object refs passed actor to actor
(what the controller does) versus a Ray Compiled Graph, on no-op stages with chunk-sized payloads.

    python -m benchmarks.transport [--stages 4] [--ticks 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch

from benchmarks import start_ray


@ray.remote(num_cpus=0.25)
class NoOpStage:
    """Holds one chunk-sized tensor; each tick reads its neighbours' tensors and publishes its own."""

    def __init__(self, numel: int):
        self.state = torch.zeros(numel)

    def publish(self, _tick: int) -> torch.Tensor:
        return self.state

    def step(self, *neighbours: torch.Tensor) -> torch.Tensor:
        self.state = self.state + sum(n[:1].sum() for n in neighbours) * 0
        return self.state


def neighbours(outputs: list, j: int) -> list:
    return [outputs[k] for k in (j - 1, j + 1) if 0 <= k < len(outputs)]


def time_object_refs(stages: list, ticks: int) -> float:
    """Seconds per tick: every tick one .remote() per stage with the previous tick's refs as arguments."""
    states = [stage.publish.remote(0) for stage in stages]
    start = time.perf_counter()
    for _ in range(ticks):
        states = [stage.step.remote(*neighbours(states, j)) for j, stage in enumerate(stages)]
    ray.get(states)
    return (time.perf_counter() - start) / ticks


def time_compiled_graph(stages: list, ticks: int) -> float:
    """Seconds per tick: one execute() of a compiled two-phase graph (publish, then step on neighbours)."""
    from ray.dag import InputNode, MultiOutputNode

    with InputNode() as tick:
        published = [stage.publish.bind(tick) for stage in stages]
        dag = MultiOutputNode([stage.step.bind(*neighbours(published, j)) for j, stage in enumerate(stages)])
    compiled = dag.experimental_compile()
    try:
        ray.get(compiled.execute(0))
        start = time.perf_counter()
        for t in range(ticks):
            ray.get(compiled.execute(t))
        return (time.perf_counter() - start) / ticks
    finally:
        compiled.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--numel", type=int, default=3 * 5 * 32 * 32, help="elements per chunk (default 3x5x32x32)")
    args = parser.parse_args()
    start_ray()
    try:
        refs, graph = [], []
        for _ in range(args.repeats):
            stages = [NoOpStage.remote(args.numel) for _ in range(args.stages)]
            refs.append(time_object_refs(stages, args.ticks))
            graph.append(time_compiled_graph(stages, args.ticks))
            for stage in stages:
                ray.kill(stage)
        r, g = statistics.median(refs), statistics.median(graph)
        print(f"P={args.stages}, {args.numel * 4 / 1024:.0f} KiB per chunk, {args.ticks} ticks, "
              f"median of {args.repeats}")
        print(f"  object refs:     {1000 * r:.2f} ms per tick")
        print(f"  compiled graph:  {1000 * g:.2f} ms per tick   (ratio refs / graph {r / g:.2f})")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
