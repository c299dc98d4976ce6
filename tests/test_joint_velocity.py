"""One joint model call of the shipped model shared by two gloo processes, against the same call in one process:
split by guidance branch with guidance, by tokens without."""

from __future__ import annotations

import dataclasses

import torch
import torch.multiprocessing as mp

from actors.backends.collective import StageGroup, free_port
from actors.backends.factory import build_backend
from orchestrator.state.settings import load_config

FRAMES = 15  # the shipped window: N = 4 noisy chunks and K = 1 context chunk of C = 3 frames
PROMPT = "a red circle"


def window(backend) -> tuple[torch.Tensor, torch.Tensor]:
    """x [1, Ch, F, h, w] and levels [1, F], the same in every process."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, backend.latent_shape[0], FRAMES, *backend.latent_shape[1:], generator=generator)
    return x, torch.rand(1, FRAMES, generator=generator)


def backend_with(guidance: float | None):
    model = load_config([], [], model="tiny").model
    return build_backend(model if guidance is None else dataclasses.replace(model, guidance_scale=guidance))


CASES = {  # name: (guidance, latent frames per stage, stage 0 first; the split); None keeps the shipped guidance 3
    "guided": (None, (6, 9), "branch"),
    "unguided": (1.0, (6, 9), "tokens"),
}


def stage(rank: int, port: int, results) -> None:
    """Stage `rank`'s share of every case's call, in the order of CASES."""
    torch.set_num_threads(1)
    group = StageGroup("127.0.0.1", port, rank, 2, torch.device("cpu"), timeout=60)
    try:
        for name, (guidance, bands, _) in CASES.items():
            backend = backend_with(guidance)
            x, sigma = window(backend)
            first = sum(bands[rank + 1 :])  # the older band (stage 1's) comes first in the window
            mine = slice(first, first + bands[rank])
            v = backend.shared_velocity(group, x[:, :, mine], sigma[:, mine], backend.encode_prompt(PROMPT), bands)
            results.put((name, rank, mine, v, group.take_stats().bytes))  # v [1, Ch, F_j, h, w]
    finally:
        group.close()


def test_a_shared_call_equals_the_call_in_one_process():
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=stage, args=(rank, port, results)) for rank in range(2)]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=180) for _ in range(2 * len(CASES))]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    torch.set_num_threads(1)
    for name, (guidance, bands, split) in CASES.items():
        backend = backend_with(guidance)
        x, sigma = window(backend)
        want = backend.velocity(x, sigma, backend.encode_prompt(PROMPT))  # [1, Ch, F, h, w]
        shares = sorted((rank, mine, v, received) for case, rank, mine, v, received in got if case == name)
        for rank, mine, v, _ in shares:
            torch.testing.assert_close(v, want[:, :, mine], rtol=0, atol=1e-5, msg=f"{name}: stage {rank}")
        received = [received for *_, received in shares]
        row = x[0, :, 0].numel() + 1  # a frame's latents and its level
        by_branch = [max(bands) * row * 4 + want.numel() * 4] * 2  # the window's latents in, one branch's v out
        assert (received == by_branch) == (split == "branch"), name
