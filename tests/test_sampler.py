"""The reference sampler through the analytic oracle: every schedule kind, partitions, constant memory."""

import pytest
import torch

from actors.backends.gaussian import GaussianProcessBackend
from orchestrator.core.config import ModelConfig, ScheduleConfig
from orchestrator.core.partition import Partition, band_views
from orchestrator.core.sampler import LevelGrid, NoiseSource, band_inputs, flow_step, sample
from orchestrator.core.schedule import Geometry, ticks

BACKEND = GaussianProcessBackend(ModelConfig(channels=2, height=8, width=8, rho=0.8, spectrum_exponent=1.5))


def run(kind="progressive", chunks=9, partition=None, init=(), **schedule) -> list[torch.Tensor]:
    g = Geometry.from_config(ScheduleConfig(kind=kind, chunk=3, noisy_chunks=4, steps=8, **schedule))
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


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_halo_all_is_exact_pavdm_for_every_partition(stages):
    plain = torch.cat(run(), dim=1)
    banded = torch.cat(run(partition=Partition(stages, None)), dim=1)
    assert torch.equal(plain, banded)


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
    shown = [band_inputs(tick, view, clean, noise, grid)[0][0] for tick in (first, second)]  # the context
    sig = float(grid.sigmas[2])
    torch.testing.assert_close(shown[0], (1 - sig) * clean[-1] + sig * noise.renoise(first.index, -1))
    assert not torch.equal(shown[0], shown[1])
    assert all(torch.equal(clean[m], kept[m]) for m in clean)


@pytest.mark.parametrize("kind", ["progressive", "chunked", "fifo"])
def test_stochastic_steps_change_the_video_and_every_partition_still_agrees(kind):
    """schedule.stochasticity: fresh noise keyed by (seed, call, chunk), so every band draws the same."""
    plain = torch.cat(run(kind), dim=1)
    stochastic = torch.cat(run(kind, stochasticity=0.5), dim=1)
    banded = torch.cat(run(kind, partition=Partition(3, None), stochasticity=0.5), dim=1)
    assert not torch.equal(plain, stochastic) and torch.equal(stochastic, banded)
    assert 0.3 < stochastic.var().item() < 1.5


def test_a_stochastic_step_re_noises_the_clean_estimate_and_only_steps_that_end_noisy_draw():
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8, stochasticity=0.6))
    noise, grid = NoiseSource(7, (2, 3, 8, 8)), LevelGrid.of(g)
    tick = next(t for t in ticks(g, 9) if len(t.noisy) == 4 and t.finished)  # the oldest chunk ends clean
    view = band_views(tick, Partition(1, None), g.noisy)[0]
    window = {u.chunk: torch.randn(2, 3, 8, 8) for u in tick.noisy}
    _, _, own = band_inputs(tick, view, window, noise, grid)
    drawn = [fresh is not None for _, _, fresh in own]
    assert drawn == [u.level_after > 0 for u in tick.noisy] and any(drawn) and not all(drawn)
    slot, to, fresh = own[-1]
    assert torch.equal(fresh, noise.step(tick.index, tick.noisy[-1].chunk))
    x, v, sig = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), 0.7
    x0, eps = x - sig * v, x + (1 - sig) * v
    expected = (1 - to) * x0 + to * (0.8 * eps + 0.6 * fresh)
    torch.testing.assert_close(flow_step(x, v, sig, to, fresh, 0.6), expected)
    torch.testing.assert_close(flow_step(x, v, sig, to, fresh, 0.0), x + (to - sig) * v)  # eta 0: the Euler step


def test_small_halo_is_a_different_but_valid_sampler():
    plain = torch.cat(run(), dim=1)
    fifo_like = torch.cat(run(partition=Partition(2, 0)), dim=1)
    assert not torch.equal(plain, fifo_like) and torch.isfinite(fifo_like).all()


def test_starting_from_a_clip_uses_its_last_chunks_as_context():
    clip = BACKEND.sample_clip(9, torch.Generator().manual_seed(3)).split(3, dim=1)
    a = torch.cat(run(init=list(clip)), 1)
    b = torch.cat(run(init=list(clip[-1:])), 1)  # K = 1: only the last chunk matters
    c = torch.cat(run(init=list(clip[:1])), 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_window_never_exceeds_context_plus_noisy_chunks():
    """However long the video, every call sees at most K + N chunks."""
    g = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=8, context_chunks=2))
    live = []

    def velocity(x, sigma, cond):
        live.append(x.shape[2] // g.chunk)
        return BACKEND.velocity(x, sigma, cond)

    list(sample(velocity, g, 60, NoiseSource(0, (2, 3, 8, 8)), lambda m: None))
    assert max(live) == g.context + g.noisy
