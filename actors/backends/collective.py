"""The stages' process group for joint model calls: gathers and re-cuts the stages' shares of a window, timed and
counted."""

from __future__ import annotations

import datetime
import math
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


class PeerLost(RuntimeError):
    """A collective failed: another stage died or did not arrive within pipeline.collective_timeout."""


def free_port() -> int:
    """A TCP port that is free on this host now (the group's rendezvous port)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


@dataclass
class CollectiveStats:
    """Time spent in collectives (waiting for peers included) and bytes received from peers."""

    seconds: float = 0.0
    bytes: int = 0


class StageGroup:
    """This process's place in the stages' torch.distributed group: rank = stage index, gloo on CPU, NCCL when the
    stages hold GPUs; one code path for both, differing only in backend and device."""

    def __init__(self, address: str, port: int, rank: int, world: int, device: torch.device, timeout: float):
        self.rank, self.world, self.device = rank, world, device
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as err:  # a peer that never came, a port taken meanwhile
            raise PeerLost(f"stage {rank} could not join the stages' group at {address}:{port}: {err}") from None
        self.stats = CollectiveStats()

    def take_stats(self) -> CollectiveStats:
        """The totals since the last call, reset."""
        stats, self.stats = self.stats, CollectiveStats()
        return stats

    def offset(self, sizes: list[int], rank: int | None = None) -> int:
        """Where a stage's share (this one's by default) starts in the window: after the shares of the older bands
        (higher stages)."""
        return sum(sizes[(self.rank if rank is None else rank) + 1 :])

    def gather(self, local: torch.Tensor, sizes: list[int], dim: int) -> torch.Tensor:
        """Every stage's share of a window, joined along `dim` in window order (the oldest band, the last stage's,
        first). `local` is this stage's share; sizes[j] is stage j's length along `dim` (shares may be uneven or
        empty: each is padded to the longest for the exchange and cut back after)."""
        longest = max(sizes)
        pad = list(local.shape)
        pad[dim] = longest - local.shape[dim]
        sent = torch.cat([local, local.new_zeros(pad)], dim=dim).to(self.device).contiguous()
        parts = [torch.empty_like(sent) for _ in range(self.world)]
        started = time.perf_counter()
        try:
            dist.all_gather(parts, sent)
        except RuntimeError as err:
            raise PeerLost(f"stage {self.rank}: a collective with the other stages failed: {err}") from None
        self.stats.seconds += time.perf_counter() - started
        self.stats.bytes += sent.numel() * sent.element_size() * (self.world - 1)
        pieces = [parts[j].narrow(dim, 0, sizes[j]) for j in reversed(range(self.world))]
        return torch.cat(pieces, dim=dim).to(local.device)

    def redistribute(self, local: torch.Tensor, held: list[int], wanted: list[int], dim: int) -> torch.Tensor:
        """This stage's share of a window split as `held` (lengths along `dim`, stage 0 first), re-cut as `wanted`
        (the same total): one all-to-all in which each stage receives exactly the part of the window that its new
        share covers and that another stage held."""
        mine, want = self._span(held, self.rank), self._span(wanted, self.rank)
        sends = [_overlap(mine, self._span(wanted, j)) for j in range(self.world)]  # what goes to stage j
        receives = [_overlap(self._span(held, j), want) for j in range(self.world)]  # what comes from stage j
        rows = local.movedim(dim, 0)  # [held[rank], ...]
        pieces = [rows[start - mine[0] : stop - mine[0]] for start, stop in sends]
        sent = torch.cat(pieces).to(self.device).contiguous()  # pieces in the order of their stages
        counts = [stop - start for start, stop in receives]
        got = sent.new_empty((sum(counts), *sent.shape[1:]))
        started = time.perf_counter()
        try:
            dist.all_to_all_single(got, sent, counts, [len(piece) for piece in pieces])
        except RuntimeError as err:
            raise PeerLost(f"stage {self.rank}: a collective with the other stages failed: {err}") from None
        self.stats.seconds += time.perf_counter() - started
        self.stats.bytes += (sum(counts) - counts[self.rank]) * math.prod(sent.shape[1:]) * sent.element_size()
        parts = got.split(counts)
        window_order = torch.cat([parts[j] for j in reversed(range(self.world))])  # older stages' parts first
        return window_order.movedim(0, dim).to(local.device)

    def _span(self, sizes: list[int], rank: int) -> tuple[int, int]:
        """[start, stop) of a stage's share in the window."""
        start = self.offset(sizes, rank)
        return start, start + sizes[rank]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The common part of two [start, stop) ranges, empty (start = stop) where they do not meet."""
    start = max(a[0], b[0])
    return start, max(start, min(a[1], b[1]))


def even_split(total: int, world: int, unit: int) -> list[int]:
    """`total` cut into `world` near-equal shares that are multiples of `unit`, stage 0 first (the larger ones)."""
    base, extra = divmod(total // unit, world)
    return [unit * (base + (1 if j < extra else 0)) for j in range(world)]
