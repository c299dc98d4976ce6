"""Schedule invariants for many window shapes and frame counts (property-based, no model, no Ray)."""

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.partition import Partition, band_views, shares
from orchestrator.core.planner import TickPlanner
from orchestrator.core.schedule import Geometry, chunks_for_frames, level_sigmas, ticks, total_ticks

geometries = st.builds(
    lambda kind, c, n, s, k, r, lc: Geometry(kind, 1 if kind == "fifo" else c, n * s if kind == "fifo" else n,
                                             n * s, k, r, min(lc, n * s - 1)),
    st.sampled_from(["progressive", "fifo", "chunked", "replace_noise"]),
    st.integers(1, 6), st.integers(1, 7), st.integers(1, 5), st.integers(0, 3), st.floats(0.5, 8.0),
    st.sampled_from([0, 0, 1, 2]),
)


@settings(max_examples=150, deadline=None)
@given(geometries, st.integers(1, 80), st.integers(0, 4))
def test_every_chunk_gets_exactly_s_updates_down_to_zero(g, frames, init_chunks):
    num_chunks = chunks_for_frames(frames, g)
    history = defaultdict(list)
    finished = []
    for tick in ticks(g, num_chunks, init_chunks):
        for u in tick.noisy:
            history[u.chunk].append((u.level_before, u.level_after))
        finished += tick.finished
    assert finished == list(range(num_chunks))
    assert num_chunks * g.chunk >= frames > (num_chunks - 1) * g.chunk
    for m in range(num_chunks):
        assert history[m] == [(lv, lv - 1) for lv in range(g.steps, 0, -1)], m


@settings(max_examples=150, deadline=None)
@given(geometries, st.integers(1, 60))
def test_noisy_levels_increase_oldest_to_newest_and_context_sits_at_its_level(g, num_chunks):
    for tick in ticks(g, num_chunks):
        levels = [c.level for c in tick.context] + [u.level_before for u in tick.noisy]
        noisy = [u.level_before for u in tick.noisy]
        assert all(0 <= lv <= g.steps for lv in levels)
        if g.kind in ("progressive", "fifo"):
            assert all(b - a == g.substeps for a, b in zip(noisy, noisy[1:], strict=False))
            assert all(c.level == g.context_level for c in tick.context)
            assert not tick.context or noisy[0] > 0
        else:
            assert len(set(noisy)) == 1
            context_level = noisy[0] if g.kind == "replace_noise" else g.context_level
            assert all(c.level == context_level for c in tick.context)
        positions = [u.position for u in tick.noisy]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)


@settings(max_examples=100, deadline=None)
@given(geometries, st.integers(1, 60))
def test_number_of_model_calls(g, num_chunks):
    count = sum(1 for _ in ticks(g, num_chunks))
    assert count == total_ticks(g, num_chunks)
    if g.kind in ("progressive", "fifo"):
        assert count == g.substeps * (num_chunks + g.noisy - 1)


@settings(max_examples=100, deadline=None)
@given(geometries, st.integers(1, 40), st.integers(0, 5))
def test_context_is_the_last_finished_chunks(g, num_chunks, init_chunks):
    done = list(range(-init_chunks, 0))
    for tick in ticks(g, num_chunks, init_chunks):
        expected = done[-g.context:] if g.context else []
        assert [c.chunk for c in tick.context] == expected
        done += list(tick.finished)


def test_paper_configuration_levels():
    g = Geometry("progressive", 5, 6, 30, 1, 3.7)
    first_full = next(t for t in ticks(g, 20) if t.shift == 5 and t.substep == 0)
    assert [u.level_before for u in first_full.noisy] == [5, 10, 15, 20, 25, 30]
    last_sub = next(t for t in ticks(g, 20) if t.shift == 5 and t.substep == 4)
    assert [u.level_after for u in last_sub.noisy] == [0, 5, 10, 15, 20, 25]
    assert last_sub.finished == (0,)
    sig = level_sigmas(30, 3.7)
    assert sig[0] == 0 and sig[-1] == 1 and bool((sig[1:] > sig[:-1]).all())


@settings(max_examples=100, deadline=None)
@given(geometries, st.integers(1, 30), st.integers(1, 7), st.one_of(st.none(), st.integers(0, 8)))
def test_bands_cover_every_noisy_chunk_once(g, num_chunks, stages, halo):
    stages = min(stages, g.noisy)
    partition = Partition(stages, halo)
    bands = partition.bands(g.noisy)
    assert sorted(p for band in bands for p in band) == list(range(g.noisy))
    assert bands[0].stop == g.noisy  # stage 0 owns the newest positions
    for tick in ticks(g, num_chunks):
        owned = []
        for view in band_views(tick, partition, g.noisy):
            assert view.start <= view.own.start and view.own.stop <= view.stop
            owned += list(view.own)
        n_ctx = len(tick.context)
        assert sorted(owned) == list(range(n_ctx, n_ctx + len(tick.noisy)))


@settings(max_examples=100, deadline=None)
@given(geometries, st.integers(1, 30), st.integers(2, 7), st.integers(0, 3))
def test_joint_slices_tile_the_window_and_every_stage_takes_part(g, num_chunks, stages, init):
    """Context mode: every stage has a slice in every tick (empty ones in fill and drain), the slices tile the
    window (the last stage's first, the context in it) and each stage updates exactly its own chunks."""
    stages = min(stages, g.noisy)
    partition = Partition.from_config(stages, "all", g.noisy, "context")
    bands = partition.bands(g.noisy)
    for tick in ticks(g, num_chunks, init):
        views = band_views(tick, partition, g.noisy)
        assert sorted(view.stage for view in views) == list(range(stages))
        n_ctx = len(tick.context)
        edge = 0
        for view in sorted(views, key=lambda view: -view.stage):  # window order: the oldest band first
            if view.start == view.stop:  # an empty slice: nothing to tile
                assert not view.own
                continue
            assert view.start == edge and view.own == range(max(view.start, n_ctx), view.stop)
            assert [tick.noisy[i - n_ctx].position in bands[view.stage] for i in view.own] == [True] * len(view.own)
            edge = view.stop
        assert edge == n_ctx + len(tick.noisy)
        assert sum(shares(views)) == edge


@settings(max_examples=100, deadline=None)
@given(geometries, st.integers(1, 30), st.integers(1, 7), st.sampled_from(["context", "halo"]),
       st.one_of(st.just("all"), st.integers(0, 2)), st.integers(0, 3))
def test_stages_hand_on_chunks_only_when_they_are_read(g, num_chunks, stages, parallel, halo, init):
    """Without halos, chunks change bands only between shifts: a stage publishes its chunks at a shift's last
    tick (where checkpoints read them too) and no tick reads chunks from another stage after a tick that did not
    publish (the planner raises if one would). Halo bands (h > 0) read their neighbours every tick."""
    stages = min(stages, g.noisy)
    partition = Partition.from_config(stages, halo, g.noisy, parallel)
    planner = TickPlanner(partition, g.noisy, g.context, {m: stages - 1 for m in range(-init, 0)})
    every_tick = stages > 1 and not partition.joint and partition.halo != 0
    for tick in ticks(g, num_chunks, init):
        for stage_tick, _ in planner.plan(tick, ""):
            assert stage_tick.publish == (tick.boundary or every_tick)


def test_too_many_stages_is_a_user_error():
    from orchestrator.core.errors import UserError

    with pytest.raises(UserError, match="exceeds the 6 noisy chunks"):
        Partition.from_config(7, 1, 6)
