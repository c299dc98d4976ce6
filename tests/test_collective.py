"""The stages' group on its own: three gloo processes re-cut a window's shares and gather them back."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from actors.backends.collective import StageGroup, even_split, frame_rows, free_port, from_frame_rows

WINDOW = torch.arange(2 * 11 * 3, dtype=torch.float32).reshape(2, 11, 3)  # [B, F, x]: frame f's values are known
HELD = [4, 0, 7]  # frames per stage, stage 0 first: uneven, one empty (the oldest band, stage 2, comes first)


def share(sizes: list[int], rank: int) -> torch.Tensor:
    """Stage `rank`'s frames of WINDOW split as `sizes`: [B, sizes[rank], x]."""
    start = sum(sizes[rank + 1 :])
    return WINDOW[:, start : start + sizes[rank]]


def recut(rank: int, port: int, results) -> None:
    torch.set_num_threads(1)
    group = StageGroup("127.0.0.1", port, rank, len(HELD), torch.device("cpu"), timeout=30)
    try:
        even = even_split(sum(HELD), group.world, 1)
        moved = group.redistribute(share(HELD, rank), HELD, even, dim=1)
        back = group.redistribute(moved, even, HELD, dim=1)
        whole = group.gather(moved, even, dim=1)
        stats = group.take_stats()
        other = [3, 4, 4]  # the same longest share: the same buffers, stage 0's padding now holds its last values
        again = group.gather(share(other, rank), other, dim=1)
        results.put((rank, torch.equal(moved, share(even, rank)), torch.equal(back, share(HELD, rank)),
                     torch.equal(whole, WINDOW) and torch.equal(again, WINDOW), stats.bytes))
    finally:
        group.close()


def test_redistribute_gives_each_stage_exactly_its_new_share():
    assert even_split(11, 3, 1) == [4, 4, 3]
    assert even_split(12, 5, 3) == [3, 3, 3, 3, 0]
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=recut, args=(rank, port, results)) for rank in range(len(HELD))]
    for worker in workers:
        worker.start()
    got = sorted(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    for rank, moved_ok, back_ok, gathered_ok, received in got:
        assert (moved_ok, back_ok, gathered_ok) == (True, True, True), f"stage {rank}"
        assert received > 0
    # stage 0 held window frames 7..10 and computes 7..10 again: the re-cut itself brings it nothing
    assert got[0][4] == 2 * 4 * 3 * 4 * (len(HELD) - 1)  # only the gather's padded shares from the two others


def test_latents_and_levels_travel_as_one_row_per_frame():
    x = torch.randn(2, 3, 5, 4, 4)  # [B, Ch, F, h, w]
    sigma = torch.rand(2, 5)  # [B, F]
    rows = frame_rows(x, sigma)
    assert rows.shape == (5, 2 * 3 * 4 * 4 + 2)
    back_x, back_sigma = from_frame_rows(rows[1:4], x, sigma)  # any run of frames, as after an exchange
    assert torch.equal(back_x, x[:, :, 1:4]) and torch.equal(back_sigma, sigma[:, 1:4])
