"""Context mode on CPU: speed against one stage, what its collectives cost per tick, and three ways to share
self-attention over the stages.

    python -m benchmarks.context_parallel speed        [--seconds 60] [--repeats 1] [--unbound]
    python -m benchmarks.context_parallel collectives  [--seconds 10] [--stages 2 3 4]
    python -m benchmarks.context_parallel cores        [--calls 20] [--repeats 3]
    python -m benchmarks.context_parallel attention    [--stages 2 3 4] [--repeats 20] [--batch 2] [--tokens 960]
                                                       [--heads 4] [--head-dim 32] [--frame-tokens 64]

`speed` makes the shipped model's video (its default config) three ways, models loaded before the clocks start:
the Ray pipeline with one stage on one thread, the Ray pipeline with two stages in context mode on one thread each,
and the in-process executor on two threads (the best single-stage use of two cores); it prints frames/s, the
ratios, and the largest difference between the two-stage and the one-stage latents (the same video: < 1e-4).
Ray stages are built for each run (untimed) and bound to cores of their own as `pavdm` binds them;
`--unbound` adds a fourth turn, the two stages with pipeline.bind_cores=false, and its ratio to the bound ones.
`collectives` runs the same model with P stages in context mode and prints, per tick and stage, the milliseconds
spent in collectives (waiting for the other stages included) and the bytes received in them.
`cores` times the shipped model's call on a whole window (15 latent frames, guidance) on one thread per process,
without the pipeline around it, three ways in turns: one process alone, two independent processes at once (what
this machine gives two processes), and two processes computing each call together as context mode's stages do
(each with its band, gloo on loopback); it prints the median ms per call, of which in collectives (waits
included), and the ratios over the one process.
`attention` times one self-attention call shared by P processes (gloo on loopback, one thread each) three ways:
the all-gather of keys and values that context mode ships, Ulysses (an all-to-all from a token split to a head
split and back; only where P divides the heads) and ring attention (P - 1 passes of key and value blocks to the
next stage, partial outputs merged by log-sum-exp). The defaults are the shipped model's call (guidance doubles
the batch to 2; 15 latent frames of 64 tokens; 4 heads of dim 32), split into near-equal shares of whole frames
(context mode cuts finer, in rows of patches); a larger call e.g. with --tokens 7680 --heads 12 --head-dim 64
--frame-tokens 1560. Per P and method it prints the median ms
per call (the slowest stage's), of which the stages spent in collectives on average (posting and waiting), the
bytes each stage sends (shares padded to the longest, so every stage sends what it receives), and the largest
difference from single-process attention, which must be < 1e-4 (else it exits non-zero).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ray
import torch
import torch.distributed as dist
import torch.nn.functional as F

from actors.backends.collective import StageGroup, even_split, free_port
from actors.backends.factory import build_backend, frame_count
from benchmarks import start_ray
from benchmarks.pipeline import run_once, runner_for, with_topology
from orchestrator.core.config import Config
from orchestrator.core.partition import Partition
from orchestrator.core.prompts import split_entry
from orchestrator.core.schedule import total_ticks
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import plan_video
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.state.outputs import read_latents
from orchestrator.state.settings import load_config


def shipped(seconds: float, stages: int, threads: int, num_cpus: float) -> Config:
    """The shipped model at its default config, its latents written beside the MP4."""
    config = with_topology(load_config([], [f"seconds={seconds}", "metrics.port=0"], model="tiny"), stages, "all",
                           threads, num_cpus, parallel="context")
    config.output.latents_out = str(Path(config.output.out).with_suffix(".arrow"))
    return config


def speed(args) -> None:
    configs = {
        "ray P=1 (1 thread)": shipped(args.seconds, 1, 1, 1.0),
        "ray P=2 context (1 thread each)": shipped(args.seconds, 2, 1, 1.0),
        "in process (2 threads)": shipped(args.seconds, 0, 2, 0.5),
    }
    if args.unbound:
        configs["ray P=2 context, unbound"] = shipped(args.seconds, 2, 1, 1.0)
        configs["ray P=2 context, unbound"].pipeline.bind_cores = False
    runners = {label: runner_for(config) for label, config in configs.items()}
    times: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(args.repeats):  # they take turns, so that a slower spell of the machine falls on all of them
        for label, run in runners.items():
            times[label].append(run())
    frames = round(args.seconds * next(iter(configs.values())).fps)
    fps = {label: frames / statistics.median(runs) for label, runs in times.items()}
    print(f"{frames} frames of the shipped model, median of {args.repeats} run(s), models loaded beforehand")
    for label, runs in times.items():
        print(f"  {label:34s} {fps[label]:6.2f} frames/s  runs: {', '.join(f'{t:.1f}s' for t in runs)}")
    one, two, local, *unbound = fps.values()
    print(f"  P=2 context / P=1: {two / one:.2f}x;  P=2 context / in process on 2 threads: {two / local:.2f}x")
    if unbound:
        print(f"  P=2 context bound / unbound: {two / unbound[0]:.3f}x")
    a, b = (read_latents(configs[label].output.latents_out) for label in list(configs)[:2])
    print(f"  largest |latent difference| P=2 context vs P=1: {(a - b).abs().max().item():.2e}")


def collectives(args) -> None:
    for stages in args.stages:
        config = shipped(args.seconds, stages, 1, 2 / stages)
        pipeline = Pipeline(config)
        try:
            metrics = PipelineMetrics("cp", stages)
            run_once(pipeline, config, metrics)
        finally:
            pipeline.shutdown()
        plan = plan_video(config, frame_count(config.model))
        count = total_ticks(plan.geometry, plan.num_chunks)
        seconds = [metrics.collective_seconds.labels("cp", str(j))._sum.get() for j in range(stages)]
        received = [metrics.collective_bytes.labels("cp", str(j))._value.get() for j in range(stages)]
        print(f"P={stages}: {count} ticks; per tick and stage: "
              f"{1000 * statistics.mean(seconds) / count:.1f} ms in collectives, "
              f"{statistics.mean(received) / count / 1024:.0f} KiB received")


def pad_tokens(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """x padded with zeros along `dim` to `length`."""
    pad = list(x.shape)
    pad[dim] = length - x.shape[dim]
    return torch.cat([x, x.new_zeros(pad)], dim=dim)


def timed(collective, *args):
    """The collective's result and the seconds it took (waiting for the other stages included)."""
    started = time.perf_counter()
    result = collective(*args)
    return result, time.perf_counter() - started


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention in the model's layout: [B, n, H, d] queries, [B, m, H, d] keys and values."""
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)))  # [B, H, n, d]
    return out.transpose(1, 2)  # [B, n, H, d]


def all_gather_attention(group: StageGroup, query, key, value, sizes: list[int]):
    """What context mode ships: StageGroup.gather brings the window's keys and values (each share padded to the
    longest), then this stage's queries attend to them. Returns the output, seconds and bytes sent in collectives."""
    both = group.gather(torch.stack([key, value]), sizes, dim=2)  # [2, B, T, H, d]
    out = attend(query, both[0], both[1])  # [B, n, H, d]
    stats = group.take_stats()
    return out, stats.seconds, stats.bytes


def all_to_all(sent: torch.Tensor) -> torch.Tensor:
    """sent[s] goes to stage s; the result's [s] came from stage s."""
    got = torch.empty_like(sent)
    dist.all_to_all_single(got, sent)
    return got


def ulysses_attention(group: StageGroup, query, key, value, sizes: list[int]):
    """Ulysses: an all-to-all trades the token split for a head split (each stage gets every token's queries, keys
    and values of H/P heads), attention runs on the whole window for those heads, and a second all-to-all trades
    back. Shares are padded to the longest. Returns the output, seconds and bytes sent in collectives."""
    world, rank, longest = group.world, group.rank, max(sizes)
    order = list(reversed(range(world)))  # window order: the last stage's share first
    qkv = pad_tokens(torch.stack([query, key, value]), 2, longest)  # [3, B, L, H, d]
    sent = qkv.unflatten(3, (world, -1)).permute(3, 0, 1, 2, 4, 5).contiguous()  # [P, 3, B, L, H/P, d]
    got, first = timed(all_to_all, sent)  # [P, 3, B, L, H/P, d]: stage s's tokens of this stage's heads
    window = torch.cat([got[s, :, :, : sizes[s]] for s in order], dim=2)  # [3, B, T, H/P, d]
    out = attend(*window)  # [B, T, H/P, d]
    parts = reversed(out.split([sizes[s] for s in order], dim=1))  # [B, n_s, H/P, d] each, stage 0 first
    back = torch.stack([pad_tokens(part, 1, longest) for part in parts])  # [P, B, L, H/P, d]
    mine, second = timed(all_to_all, back)  # [P, B, L, H/P, d]: this stage's tokens of stage s's heads
    out = mine[:, :, : sizes[rank]].permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, n, H, d]
    sent_bytes = (sent[0].numel() + back[0].numel()) * sent.element_size() * (world - 1)
    return out, first + second, sent_bytes


def wait(requests: list) -> None:
    """Waits for the point-to-point operations to finish."""
    for request in requests:
        request.wait()


def ring_attention(group: StageGroup, query, key, value, sizes: list[int]):
    """Ring attention: P - 1 times each stage passes the keys and values it holds (padded to the longest share) to
    the next stage while it attends to them, and merges the partial outputs by their log-sum-exp, in float32.
    Returns the output, seconds and bytes sent in collectives (posting the passes and waiting for them)."""
    world, rank = group.world, group.rank
    held = pad_tokens(torch.stack([key, value]).transpose(2, 3), 3, max(sizes)).contiguous()  # [2, B, H, L, d]
    spare = torch.empty_like(held)  # [2, B, H, L, d]
    q = query.transpose(1, 2).float()  # [B, H, n, d]
    out = torch.zeros_like(q)  # [B, H, n, d]
    total = torch.full(q.shape[:-1], float("-inf"))  # [B, H, n]: log-sum-exp of the scores so far
    seconds = 0.0
    for step in range(world):
        if step < world - 1:
            passes, took = timed(dist.batch_isend_irecv, [dist.P2POp(dist.isend, held, (rank + 1) % world),
                                                          dist.P2POp(dist.irecv, spare, (rank - 1) % world)])
            seconds += took
        length = sizes[(rank - step) % world]  # the held block came from stage rank - step
        part, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, held[0, :, :, :length].float(), held[1, :, :, :length].float())[:2]  # [B, H, n, d], [B, H, n]
        merged = torch.logaddexp(total, lse)  # [B, H, n]
        out = out * (total - merged).exp().unsqueeze(-1) + part * (lse - merged).exp().unsqueeze(-1)  # [B, H, n, d]
        total = merged
        if step < world - 1:
            seconds += timed(wait, passes)[1]
            held, spare = spare, held
    return out.transpose(1, 2).type_as(query), seconds, held.numel() * held.element_size() * (world - 1)


WARM_UP = 2  # untimed calls of each method after the one that is checked
METHODS = {"all-gather": all_gather_attention, "Ulysses": ulysses_attention, "ring": ring_attention}


def attention_worker(rank: int, port: int, sizes: list[int], shape: tuple[int, int, int, int], repeats: int,
                     results) -> None:
    """Stage `rank` of len(sizes): times each method on its share of one window (the same random window in every
    process) and checks it against single-process attention; stage 0 puts every stage's numbers on `results`."""
    torch.set_num_threads(1)
    world = len(sizes)
    group = StageGroup("127.0.0.1", port, rank, world, torch.device("cpu"), timeout=120)
    torch.manual_seed(0)
    window = torch.randn(3, *shape)  # [3, B, T, H, d]: the window's queries, keys and values
    start = group.offset(sizes)
    query, key, value = window[:, :, start : start + sizes[rank]].unbind(0)  # [B, n, H, d] each
    expected = attend(query, window[1], window[2])  # [B, n, H, d]
    numbers = {}
    for name, method in METHODS.items():
        if name == "Ulysses" and shape[2] % world:
            continue
        out, _, sent = method(group, query, key, value, sizes)  # out: [B, n, H, d]
        calls = []
        for _ in range(WARM_UP + repeats):
            dist.barrier()
            started = time.perf_counter()
            _, seconds, _ = method(group, query, key, value, sizes)
            calls.append((time.perf_counter() - started, seconds))
        numbers[name] = {"error": (out - expected).abs().max().item(), "calls": calls[WARM_UP:], "bytes": sent}
    every = [None] * world if rank == 0 else None
    dist.gather_object(numbers, every)
    if rank == 0:
        results.put(every)
    group.close()


def attention(args) -> None:
    shape = (args.batch, args.tokens, args.heads, args.head_dim)
    print(f"B={args.batch}, {args.tokens} tokens ({args.tokens // args.frame_tokens} frames), {args.heads} heads "
          f"of dim {args.head_dim}; "
          f"median of {args.repeats} calls, 1 thread per stage, gloo on loopback")
    print("| P | shares (stage 0 first) | method | ms per call | of which communication | KiB sent per stage "
          "| max abs error |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    context = torch.multiprocessing.get_context("spawn")
    for stages in args.stages:
        sizes = even_split(args.tokens, stages, args.frame_tokens)
        results = context.SimpleQueue()
        torch.multiprocessing.spawn(attention_worker, (free_port(), sizes, shape, args.repeats, results), stages)
        every = results.get()
        for name in METHODS:
            if name not in every[0]:
                print(f"| {stages} | {sizes} | {name} | skipped: {args.heads} heads not divisible by {stages} | | | |")
                continue
            calls = [[stage[name]["calls"][i] for stage in every] for i in range(args.repeats)]
            total = statistics.median(max(spent for spent, _ in call) for call in calls)  # the slowest stage's
            comm = statistics.median(statistics.mean(seconds for _, seconds in call) for call in calls)
            error = max(stage[name]["error"] for stage in every)
            worst = max(worst, error)
            print(f"| {stages} | {sizes} | {name} | {1000 * total:.2f} | {1000 * comm:.2f} | "
                  f"{every[0][name]['bytes'] / 1024:,.0f} | {error:.1e} |")
    if worst >= 1e-4:
        raise SystemExit(f"a method differs from single-process attention by {worst:.1e} (>= 1e-4)")


def call_worker(rank: int, world: int, port: int | None, calls: int, start, results) -> None:
    """Makes `calls` calls of the shipped model on a whole window on one thread, after all workers are ready: alone
    (port None) or as stage `rank` of `world` computing each call together (context mode, the window split into
    its bands); puts the seconds per call and the seconds of it in collectives on `results`."""
    torch.set_num_threads(1)
    config = shipped(1.0, world, 1, 0.5)
    backend = build_backend(config.model)
    chunk, noisy, context = config.schedule.chunk, config.schedule.noisy_chunks, config.schedule.context_chunks
    frames = (noisy + context) * chunk
    generator = torch.Generator().manual_seed(0)  # every process the same window
    x = torch.randn(1, *backend.latent_shape[:1], frames, *backend.latent_shape[1:], generator=generator)
    sigma = torch.rand(1, frames, generator=generator)  # [1, F]
    cond = backend.encode_prompt(split_entry(config.prompts[0])[1])
    group = None
    if port is None:
        def call() -> None:
            backend.velocity(x, sigma, cond)  # [1, Ch, F, h, w]
    else:
        group = StageGroup("127.0.0.1", port, rank, world, torch.device("cpu"), timeout=120)
        partition = Partition.from_config(world, "all", noisy, parallel="context")
        bands = [(len(band) + (context if band.start == 0 else 0)) * chunk  # the oldest band also holds the context
                 for band in partition.bands(noisy)]  # latent frames per stage, stage 0 first
        first = sum(bands[rank + 1 :])
        mine = slice(first, first + bands[rank])

        def call() -> None:
            backend.shared_velocity(group, x[:, :, mine], sigma[:, mine], cond, tuple(bands))
    call()  # warm-up
    start.wait()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    spent = time.perf_counter() - started
    results.put((spent / calls, 0.0 if group is None else group.take_stats().seconds / calls))


def timed_calls(processes: int, calls: int, joint: bool) -> tuple[float, float]:
    """Seconds per call of `processes` one-thread processes calling the model at once, each on its own window or
    (joint) together on one, and the seconds of it in collectives; means over the processes."""
    context = torch.multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.SimpleQueue()
    port = free_port() if joint else None
    workers = [context.Process(target=call_worker, args=(rank, processes, port, calls, start, results))
               for rank in range(processes)]
    for worker in workers:
        worker.start()
    per_call = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return statistics.mean(t for t, _ in per_call), statistics.mean(c for _, c in per_call)


def cores(args) -> None:
    kinds = {"one process alone": (1, False), "two processes at once, each its own call": (2, False),
             "two processes sharing each call (context mode)": (2, True)}
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in kinds}
    for _ in range(args.repeats):  # in turns, so that a slower spell of the machine falls on all three
        for label, (processes, joint) in kinds.items():
            runs[label].append(timed_calls(processes, args.calls, joint))
    alone, both, shared = (statistics.median(t for t, _ in runs[label]) for label in kinds)
    print(f"the shipped model's call on a whole window, 1 thread per process, {args.calls} calls, "
          f"median of {args.repeats}")
    for label, times in runs.items():
        collective = statistics.median(c for _, c in times)
        print(f"  {label:48s} {1000 * statistics.median(t for t, _ in times):6.1f} ms per call "
              f"({1000 * collective:.1f} in collectives)  runs: {', '.join(f'{1000 * t:.1f}' for t, _ in times)}")
    print(f"  throughput of two processes over one: {2 * alone / both:.2f}x; "
          f"a call shared by two over one alone: {alone / shared:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_speed = sub.add_parser("speed")
    run_speed.add_argument("--seconds", type=float, default=60.0)
    run_speed.add_argument("--repeats", type=int, default=1)
    run_speed.add_argument("--unbound", action="store_true", help="also time P=2 with pipeline.bind_cores=false")
    run_collectives = sub.add_parser("collectives")
    run_collectives.add_argument("--seconds", type=float, default=10.0)
    run_collectives.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    run_cores = sub.add_parser("cores")
    run_cores.add_argument("--calls", type=int, default=20)
    run_cores.add_argument("--repeats", type=int, default=3)
    run_attention = sub.add_parser("attention")
    run_attention.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    run_attention.add_argument("--repeats", type=int, default=20)
    run_attention.add_argument("--batch", type=int, default=2)  # guidance doubles the batch
    run_attention.add_argument("--tokens", type=int, default=960)  # 15 latent frames x 64 tokens
    run_attention.add_argument("--heads", type=int, default=4)
    run_attention.add_argument("--head-dim", type=int, default=32)
    run_attention.add_argument("--frame-tokens", type=int, default=64)  # 32 x 32 frames in 4 x 4 patches
    args = parser.parse_args()
    if args.command == "attention":
        if args.tokens % args.frame_tokens:
            parser.error("--tokens must be a multiple of --frame-tokens")
        attention(args)
        return
    if args.command == "cores":
        cores(args)
        return
    start_ray(2)
    try:
        {"speed": speed, "collectives": collectives}[args.command](args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
