"""The reference sampler through the analytic oracle: every schedule kind, solver and partition, constant memory."""

from pathlib import Path
from typing import get_args

import pytest
import torch

from actors.backends.gaussian import GaussianProcessBackend
from orchestrator.core.config import ModelConfig, ScheduleConfig, Solver
from orchestrator.core.partition import Partition, band_views, shares
from orchestrator.core.sampler import LevelGrid, NoiseSource, Window, band_inputs, denoise_views, sample, single_cond
from orchestrator.core.schedule import Geometry, ticks
from orchestrator.core.solvers import posterior_step

BACKEND = GaussianProcessBackend(ModelConfig(channels=2, height=8, width=8, rho=0.8, spectrum_exponent=1.5))
SOLVERS = get_args(Solver)


def run(kind="progressive", chunks=9, partition=None, init=(), **schedule) -> list[torch.Tensor]:
    g = Geometry.from_config(ScheduleConfig(**{"kind": kind, "chunk": 3, "noisy_chunks": 4, "steps": 8} | schedule))
    noise = NoiseSource(7, (2, g.chunk, 8, 8))
    out = list(sample(BACKEND.velocity, g, chunks, noise, lambda m: None, init, partition))
    assert [m for m, _ in out] == list(range(chunks))
    return [x for _, x in out]


@pytest.mark.parametrize("kind", ["progressive", "chunked", "replace_noise", "fifo"])
def test_every_kind_produces_finite_chunks_of_the_right_shape(kind):
    chunks = run(kind)
    frames = 1 if kind == "fifo" else 3
    assert all(x.shape == (2, frames, 8, 8) and torch.isfinite(x).all() for x in chunks)
    assert 0.3 < torch.cat(chunks, 1).var().item() < 1.5


def test_the_euler_solver_makes_the_videos_of_before_the_solvers_bit_for_bit():
    """tests/data/euler_latents.pt holds the latents these runs gave before schedule.solver existed (recorded with
    one torch thread on the development machine, as every bit-exact comparison of docs/design.md §3)."""
    recorded = torch.load(Path(__file__).parent / "data" / "euler_latents.pt")
    clip = BACKEND.sample_clip(6, torch.Generator().manual_seed(3)).split(3, dim=1)
    made = {kind: torch.cat(run(kind, chunks=6, solver="euler"), 1)
            for kind in ("progressive", "chunked", "replace_noise", "fifo")}
    made["progressive-clip-context_level"] = torch.cat(
        run(chunks=6, init=list(clip), context_level=1, context_chunks=2, solver="euler"), 1)
    assert made.keys() == recorded.keys()
    assert all(torch.equal(made[name], recorded[name]) for name in recorded)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("stages", [2, 3, 4])
def test_halo_all_is_exact_pavdm_for_every_partition(stages, solver):
    plain = torch.cat(run(solver=solver), dim=1)
    banded = torch.cat(run(partition=Partition(stages, None), solver=solver), dim=1)
    assert torch.equal(plain, banded)


@pytest.mark.parametrize("kind", ["progressive", "chunked", "fifo"])
def test_a_chunks_first_two_steps_and_its_last_are_first_order(kind):
    """A clean estimate made at sigma = 1 carries no slope in log-SNR and the step to level 0 has an infinite one:
    with S = 3 every solver makes Euler's video, with S = 4 dpmpp_3m makes dpmpp_2m's, with S = 5 all differ."""
    def video(steps, solver):
        return torch.cat(run(kind, noisy_chunks=1, steps=steps, solver=solver), 1)

    torch.testing.assert_close(video(3, "dpmpp_3m"), video(3, "euler"))
    assert torch.equal(video(4, "dpmpp_3m"), video(4, "dpmpp_2m"))
    assert not torch.allclose(video(4, "dpmpp_2m"), video(4, "euler"))
    assert not torch.allclose(video(5, "dpmpp_3m"), video(5, "dpmpp_2m"))


def test_a_noisy_context_changes_the_video_and_every_partition_still_agrees():
    """schedule.context_level: the context is re-noised with fresh noise every call, the same in every band."""
    clean = torch.cat(run(), dim=1)
    noisy = torch.cat(run(context_level=1), dim=1)
    banded = torch.cat(run(partition=Partition(3, None), context_level=1), dim=1)
    assert not torch.equal(clean, noisy) and torch.equal(noisy, banded)
    assert 0.3 < noisy.var().item() < 1.5


def test_a_noisy_context_is_fresh_noise_every_call_on_an_untouched_chunk():
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8, context_level=2))
    noise, grid = NoiseSource(7, (2, 3, 8, 8)), LevelGrid.of(g)
    first, second = [t for t in ticks(g, 9, init_chunks=1)][:2]
    view = band_views(first, Partition(1, None), g.noisy)[0]
    clean = {m: torch.randn(2, 3, 8, 8) for m in (-1, 0, 1, 2, 3)}
    kept = {m: x.clone() for m, x in clean.items()}
    shown = [band_inputs(tick, view, Window(clean), noise, grid)[0][0] for tick in (first, second)]  # the context
    sig = float(grid.sigmas[2])
    torch.testing.assert_close(shown[0], (1 - sig) * clean[-1] + sig * noise.renoise(first.index, -1))
    assert not torch.equal(shown[0], shown[1])
    assert all(torch.equal(clean[m], kept[m]) for m in clean)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", ["progressive", "chunked", "fifo"])
def test_stochastic_steps_change_the_video_and_every_partition_still_agrees(kind, solver):
    """schedule.stochasticity: fresh noise keyed by (seed, call, chunk), so every band draws the same."""
    plain = torch.cat(run(kind, solver=solver), dim=1)
    stochastic = torch.cat(run(kind, stochasticity=0.5, solver=solver), dim=1)
    banded = torch.cat(run(kind, partition=Partition(3, None), stochasticity=0.5, solver=solver), dim=1)
    assert not torch.equal(plain, stochastic) and torch.equal(stochastic, banded)
    assert 0.3 < stochastic.var().item() < 1.5


def test_a_stochastic_step_samples_the_posterior_and_only_steps_that_end_noisy_draw():
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8, stochasticity=0.6))
    noise, grid = NoiseSource(7, (2, 3, 8, 8)), LevelGrid.of(g)
    tick = next(t for t in ticks(g, 9) if len(t.noisy) == 4 and t.finished)  # the oldest chunk ends clean
    view = band_views(tick, Partition(1, None), g.noisy)[0]
    window = Window({u.chunk: torch.randn(2, 3, 8, 8) for u in tick.noisy})
    _, sigmas, own = band_inputs(tick, view, window, noise, grid)
    drawn = [step.fresh is not None for step in own]
    assert drawn == [u.level_after > 0 for u in tick.noisy] and any(drawn) and not all(drawn)
    newest = own[-1]
    assert torch.equal(newest.fresh, noise.step(tick.index, tick.noisy[-1].chunk))
    x, v = window.chunks[tick.noisy[-1].chunk], torch.randn(2, 3, 8, 8)
    sig = sigmas[newest.slot]
    stepped, history = grid.step(x, v, sig, newest)
    torch.testing.assert_close(stepped, posterior_step(x, x - sig * v, sig, newest.sigma_to, 0.6, newest.fresh))
    assert history is None  # Euler keeps none


def test_small_halo_is_a_different_but_valid_sampler():
    plain = torch.cat(run(), dim=1)
    fifo_like = torch.cat(run(partition=Partition(2, 0)), dim=1)
    assert not torch.equal(plain, fifo_like) and torch.isfinite(fifo_like).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_starting_from_a_clip_uses_its_last_chunks_as_context(solver):
    """The clip's chunks are clean context, without solver history."""
    clip = BACKEND.sample_clip(9, torch.Generator().manual_seed(3)).split(3, dim=1)
    a = torch.cat(run(init=list(clip), solver=solver), 1)
    b = torch.cat(run(init=list(clip[-1:]), solver=solver), 1)  # K = 1: only the last chunk matters
    c = torch.cat(run(init=list(clip[:1]), solver=solver), 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_resumed_window_with_its_history_continues_the_same_video(solver):
    """What a checkpoint holds at a shift boundary, the chunks and their solver history, is all a run needs."""
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8, solver=solver))
    noise, saved = NoiseSource(7, (2, 3, 8, 8)), {}

    def on_boundary(tick, window):
        if tick.shift == 5:
            saved["at"] = (tick.index + 1, window.copy())

    whole = list(sample(BACKEND.velocity, g, 9, noise, lambda m: None, on_boundary=on_boundary))
    next_tick, window = saved["at"]
    assert bool(window.history) == (solver != "euler")
    assert all(len(h) <= {"euler": 0, "dpmpp_2m": 1, "dpmpp_3m": 2}[solver] for h in window.history.values())
    resumed = list(sample(BACKEND.velocity, g, 9, noise, lambda m: None,
                          resume=(next_tick, window.copy(), 0)))
    finished = [m for m, _ in whole if m not in {m for m, _ in resumed}]
    assert finished == list(range(len(finished))) and all(
        torch.equal(x, y) for (_, x), (_, y) in zip(whole[len(finished):], resumed, strict=True))
    if solver != "euler":  # without its history the video changes
        forgetful = list(sample(BACKEND.velocity, g, 9, noise, lambda m: None,
                                resume=(next_tick, Window(dict(window.chunks)), 0)))
        assert not all(torch.equal(x, y) for (_, x), (_, y) in zip(resumed, forgetful, strict=True))


def test_window_never_exceeds_context_plus_noisy_chunks():
    """However long the video, every call sees at most K + N chunks."""
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8, context_chunks=2))
    live = []

    def velocity(x, sigma, cond):
        live.append(x.shape[2] // g.chunk)
        return BACKEND.velocity(x, sigma, cond)

    list(sample(velocity, g, 60, NoiseSource(0, (2, 3, 8, 8)), lambda m: None))
    assert max(live) == g.context + g.noisy


def test_a_joint_window_that_one_stage_holds_alone_is_that_stages_own_call():
    """Context mode, fill and drain: where one stage holds the whole window, it makes the one-stage call of the
    whole window and the other stage makes none; the shared call is not used."""
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8))
    partition = Partition.from_config(2, "all", g.noisy, "context")
    grid, noise = LevelGrid.of(g), NoiseSource(7, (2, g.chunk, 8, 8))

    def no_shared(*args, **kwargs):
        raise AssertionError("a window that one stage holds went to the shared call")

    frames: list[int] = []  # the frames of every model call made

    def velocity(x, sigma, cond):
        frames.append(x.shape[2])  # x [B, Ch, F, H, W]
        return BACKEND.velocity(x, sigma, cond)

    alone = 0
    for tick in ticks(g, 5):
        views = band_views(tick, partition, g.noisy)
        split = shares(views)
        if sum(1 for n in split if n) != 1:
            continue
        alone += 1
        window = Window({m: noise.chunk(m) for m in [c.chunk for c in tick.context] + [u.chunk for u in tick.noisy]})
        (whole,) = band_views(tick, Partition(), g.noisy)
        (want,) = denoise_views(BACKEND.velocity, single_cond, grid, [(tick, whole, window, noise, None)])
        for view in views:
            frames.clear()
            (got,) = denoise_views(velocity, single_cond, grid, [(tick, view, window, noise, None)], shares=[split],
                                   shared=no_shared)
            if view.own:
                assert frames == [(len(tick.context) + len(tick.noisy)) * g.chunk]
                assert got.chunks.keys() == want.chunks.keys()
                assert all(torch.equal(got.chunks[m], want.chunks[m]) for m in want.chunks)
            else:
                assert frames == [] and not got.chunks
    assert alone == 2 * g.substeps * 2  # the first two shifts and the last two
