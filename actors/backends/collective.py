"""The stages' process group for joint model calls: gathers and re-cuts the stages' shares of a window, timed and
counted."""

from __future__ import annotations

import contextlib
import datetime
import math
import socket
import time
from collections.abc import Iterator
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

    MAX_BUFFERS = 32  # exchange buffers kept (see _buffer)

    def __init__(self, address: str, port: int, rank: int, world: int, device: torch.device, timeout: float):
        self.rank, self.world, self.device = rank, world, device
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as err:  # a peer that never came, a port taken meanwhile
            raise PeerLost(f"stage {rank} could not join the stages' group at {address}:{port}: {err}") from None
        self.stats = CollectiveStats()
        self.buffers: dict[tuple, torch.Tensor] = {}

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
        empty: each travels padded to the longest and is cut back after). The exchange goes through buffers kept
        from call to call: on CPU, fresh ones are faulted in on every call (a quarter of the time of the shipped
        model's gather of keys and values)."""
        longest = max(sizes)
        shape = list(local.shape)
        shape[dim] = longest
        sent = self._buffer("sent", shape, local.dtype)
        sent.narrow(dim, 0, local.shape[dim]).copy_(local)  # the padding keeps stale values, cut away below
        got = self._buffer("got", [self.world * shape[0], *shape[1:]], local.dtype)
        with self.exchanging():
            dist.all_gather_single(got, sent)
        self.stats.bytes += sent.numel() * sent.element_size() * (self.world - 1)
        parts = got.unflatten(0, (self.world, shape[0]))  # [P, *shape]: stage j's share padded, at parts[j]
        pieces = [parts[j].narrow(dim, 0, sizes[j]) for j in reversed(range(self.world))]
        return torch.cat(pieces, dim=dim).to(local.device)

    def gather_window(self, x: torch.Tensor, sigma: torch.Tensor, frames: list[int]
                      ) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """The whole window from every stage's band (this one's x [B, Ch, F_j, h, w], sigma [B, F_j]; frames[j]
        latent frames per stage): its latents [B, Ch, F, h, w] and levels [B, F], in one exchange (they are small
        beside a model's activations), and where this stage's frames lie in it."""
        rows = self.gather(frame_rows(x, sigma), frames, dim=0)  # [F, B*Ch*h*w + B]
        window, levels = from_frame_rows(rows, x, sigma)
        start = self.offset(frames)
        return window, levels, slice(start, start + frames[self.rank])

    def _buffer(self, role: str, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of this shape on the group's device for one role in an exchange, the same one on every call
        that asks for it (a few shapes recur: the window's during most of a run, others during fill and drain)."""
        key = (role, tuple(shape), dtype)
        if key not in self.buffers:
            if len(self.buffers) >= self.MAX_BUFFERS:
                self.buffers.clear()
            self.buffers[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return self.buffers[key]

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
        with self.exchanging():
            dist.all_to_all_single(got, sent, counts, [len(piece) for piece in pieces])
        self.stats.bytes += (sum(counts) - counts[self.rank]) * math.prod(sent.shape[1:]) * sent.element_size()
        parts = got.split(counts)
        window_order = torch.cat([parts[j] for j in reversed(range(self.world))])  # older stages' parts first
        return window_order.movedim(0, dim).to(local.device)

    @contextlib.contextmanager
    def exchanging(self) -> Iterator[None]:
        """Around a collective: its time is counted, and its failure (a peer gone) raises PeerLost."""
        started = time.perf_counter()
        try:
            yield
        except RuntimeError as err:
            raise PeerLost(f"stage {self.rank}: a collective with the other stages failed: {err}") from None
        finally:
            self.stats.seconds += time.perf_counter() - started

    def _span(self, sizes: list[int], rank: int) -> tuple[int, int]:
        """[start, stop) of a stage's share in the window."""
        start = self.offset(sizes, rank)
        return start, start + sizes[rank]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def frame_rows(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Latents x [B, Ch, F, h, w] and their levels sigma [B, F] as one row per frame [F, B*Ch*h*w + B], so that
    one exchange moves both (the sampler's latents and levels are both float32: nothing is rounded)."""
    return torch.cat([x.movedim(2, 0).flatten(1), sigma.movedim(1, 0).to(x.dtype)], dim=1)


def from_frame_rows(rows: torch.Tensor, x_like: torch.Tensor, sigma_like: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """frame_rows undone for rows [F', ...]: (x [B, Ch, F', h, w], sigma [B, F']) in the dtypes of the likes."""
    b, ch, _, h, w = x_like.shape
    latents, levels = rows.split([b * ch * h * w, b], dim=1)  # [F', B*Ch*h*w], [F', B]
    return (latents.unflatten(1, (b, ch, h, w)).movedim(0, 2).contiguous(),
            levels.movedim(0, 1).to(sigma_like.dtype).contiguous())


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The common part of two [start, stop) ranges, empty (start = stop) where they do not meet."""
    start = max(a[0], b[0])
    return start, max(start, min(a[1], b[1]))


def even_split(total: int, world: int, unit: int) -> list[int]:
    """`total` cut into `world` near-equal shares that are multiples of `unit`, stage 0 first (the larger ones)."""
    base, extra = divmod(total // unit, world)
    return [unit * (base + (1 if j < extra else 0)) for j in range(world)]
