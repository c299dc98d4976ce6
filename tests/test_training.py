"""The progressive recipe: level bookkeeping of training samples, and a micro training run that learns."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import SkyReelsV2Transformer3DModel

from orchestrator.core.config import ScheduleConfig
from orchestrator.core.errors import UserError
from orchestrator.core.schedule import Geometry, sigma_of
from tests.tiny_models import MICRO_TRAINING
from training.recipe.config import load_train_config
from training.recipe.stills import MIN_U, still_clips, still_sigmas
from training.recipe.train import describe_losses, is_still_step, train, velocity_loss, window_sigmas
from training.recipe.windows import OFFSET_SCALE, WindowShape, training_sigmas, window_shape
from training.world.probe import segment
from training.world.scenes import parse_caption

GEOMETRY = Geometry.from_config(ScheduleConfig(chunk=3, noisy_chunks=4, steps=12, context_chunks=1, shift=1.0))


def test_levels_are_staggered_with_one_offset_per_sample():
    generator = torch.Generator().manual_seed(0)
    sig = training_sigmas(GEOMETRY, WindowShape(0, 3, True), 2000, generator).double()  # [B, 4]; shift 1: u
    gaps = sig[:, 1:] - sig[:, :-1]
    inner = (sig > 0.01).all(1) & (sig < 0.99).all(1)  # rows the clamp did not touch
    torch.testing.assert_close(gaps[inner], torch.full_like(gaps[inner], 0.25), atol=1e-6, rtol=0)
    # position 1 sits at u = (6 - k)/12 + delta: k uniform on {0, 1, 2}, delta ~ N(0, (0.4/4)^2)
    expected_std = ((2 / 3) / 144 + (OFFSET_SCALE / 4) ** 2) ** 0.5
    assert abs(sig[:, 1].mean().item() - 5 / 12) < 0.01
    assert abs(sig[:, 1].std().item() - expected_std) < 0.01
    assert (sig >= 0).all() and (sig <= 1).all()


def test_window_shapes_cover_full_fill_and_drain():
    generator = torch.Generator().manual_seed(1)
    shapes = [window_shape(GEOMETRY, 0.5, generator) for _ in range(400)]
    assert any(s == WindowShape(0, 3, True) for s in shapes)
    assert any(s.last == 3 and s.first > 0 and not s.context for s in shapes)  # filling: the video start
    assert any(s.last == 3 and s.first > 0 and s.context for s in shapes)  # filling after a clip it continues
    assert any(s.first == 0 and s.last < 3 and s.context for s in shapes)  # draining: the video end


def test_time_shift_is_applied():
    generator = torch.Generator().manual_seed(2)
    shifted = Geometry("progressive", 3, 4, 12, 1, 3.0)
    sig = training_sigmas(shifted, WindowShape(0, 3, True), 1, generator)
    u = training_sigmas(GEOMETRY, WindowShape(0, 3, True), 1, torch.Generator().manual_seed(2))
    torch.testing.assert_close(sig, sigma_of(u.double(), 3.0).float())


def test_window_levels_show_the_context_clean_and_each_chunks_level_over_its_frames():
    shape = WindowShape(0, 3, True)
    sig = window_sigmas(GEOMETRY, shape, 50, torch.Generator().manual_seed(3))  # [B, 3 context + 12 noisy frames]
    chunks = training_sigmas(GEOMETRY, shape, 50, torch.Generator().manual_seed(3))  # [B, 4]
    assert (sig[:, :3] == 0).all()
    torch.testing.assert_close(sig[:, 3:], chunks.repeat_interleave(3, dim=1))
    without = window_sigmas(GEOMETRY, WindowShape(2, 3, False), 5, torch.Generator().manual_seed(3))
    assert without.shape == (5, 6)  # the two newest chunks, no context


def test_the_loss_is_the_mean_squared_error_of_the_frames_above_level_zero():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 3, 4, 8, 8, generator=generator)  # [B, 3, F, H, W]
    target = torch.randn(2, 3, 4, 8, 8, generator=generator)
    sig = torch.tensor([[0.0, 0.2, 0.2, 0.5], [0.0, 0.0, 0.3, 0.9]])  # [B, F]: the context and a finished frame at 0
    scored = prediction.permute(0, 2, 1, 3, 4)[sig > 0], target.permute(0, 2, 1, 3, 4)[sig > 0]  # [5, 3, H, W] each
    torch.testing.assert_close(velocity_loss(prediction, target, sig), F.mse_loss(*scored))
    untouched = prediction.clone()
    untouched[:, :, 0] = target[:, :, 0] + 100  # an error on frame 0, level 0 in both samples, does not count
    torch.testing.assert_close(velocity_loss(untouched, target, sig), velocity_loss(prediction, target, sig))


def test_stills_are_single_frames_of_independent_scenes_with_their_captions():
    rng = np.random.default_rng(0)
    clean, captions = still_clips(12, 2, 1, 32, 8.0, rng)
    assert clean.shape == (12, 3, 1, 32, 32) and clean.min() >= -1 and clean.max() <= 1
    assert len(set(captions)) > 6  # independent scenes, not frames of one
    frames = ((clean[:, :, 0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()  # [B, H, W, 3]
    for frame, caption in zip(frames, captions, strict=True):
        found = {blob.colour for blob in segment(frame)}
        assert found and found <= {o.colour for o in parse_caption(caption).objects}


def test_stills_of_several_frames_are_consecutive_frames_of_one_scene():
    clean, captions = still_clips(6, 1, 3, 32, 8.0, np.random.default_rng(1))  # [B, 3, F, H, W]
    assert clean.shape == (6, 3, 3, 32, 32)
    frames = ((clean.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().byte().numpy()  # [B, F, H, W, 3]
    for clip, caption in zip(frames, captions, strict=True):
        (shown,) = parse_caption(caption).objects
        blobs = [segment(frame) for frame in clip]
        assert all([blob.colour for blob in frame_blobs] == [shown.colour] for frame_blobs in blobs)
        centres = [frame_blobs[0].centroid for frame_blobs in blobs]
        assert centres[0] != centres[1]  # the object moves from frame to frame


def test_stills_levels_are_drawn_one_per_still_and_shifted():
    sig = still_sigmas(4000, 1, 1.0, torch.Generator().manual_seed(0))  # [B, 1]; shift 1: u
    assert sig.shape == (4000, 1) and sig.min() >= MIN_U and sig.max() <= 1
    assert abs(sig.mean().item() - 0.5) < 0.02 and sig.std() > 0.25  # uniform, not one level for all
    shifted = still_sigmas(4000, 1, 1.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, sigma_of(sig, 1.5))
    chunks = still_sigmas(4000, 3, 1.5, torch.Generator().manual_seed(0))  # [B, 3]: one level over each still
    torch.testing.assert_close(chunks, shifted.expand(4000, 3))


def test_a_stills_phase_trains_on_stills_but_every_windows_every_th_step():
    assert all(is_still_step(load_train_config([], ["data.stills_every=1"]), step) for step in range(9))
    assert not any(is_still_step(load_train_config([], []), step) for step in range(9))
    mostly_stills = load_train_config([], ["data.stills_every=1", "data.windows_every=4"])
    assert [step for step in range(9) if not is_still_step(mostly_stills, step)] == [3, 7]


@pytest.mark.parametrize("override, message", [
    (["data.stills_every=-1"], "data.stills_every must be 0 (no stills) or 1 (a stills phase), got -1"),
    (["data.stills_every=1", "data.stills_batch=0"], "data.stills_batch and data.stills_frames must be >= 1"),
    (["data.stills_every=1", "data.stills_frames=0"], "got 64, 0 and 1.5"),
    (["data.windows_every=4"], "data.windows_every must be 0 or, with data.stills_every=1"),
    (["data.stills_every=1", "data.windows_every=-1"], "data.windows_every must be 0 or"),
    (["data.max_objects=0"], "data.max_objects must be in 1..7 (the world's colours), got 0"),
    (["data.stills_max_objects=8"], "data.stills_max_objects must be in 0..7"),
    (["schedule.context_level=1"], "schedule.context_level is a sampling setting; training shows the context clean"),
    (["schedule.stochasticity=0.5"], "schedule.stochasticity is a sampling setting"),
])
def test_bad_data_settings_are_named(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_train_config([], override)


def test_a_mixed_stills_schedule_is_refused_in_one_line():
    with pytest.raises(UserError) as refused:
        load_train_config([], ["data.stills_every=2", "data.windows_every=4"])
    assert str(refused.value) == "data.stills_every must be 0 (no stills) or 1 (a stills phase), got 2"


def test_micro_training_lowers_the_loss_and_round_trips(tmp_path):
    config = load_train_config([], [
        f"out={tmp_path / 'model'}", "optim.steps=150", "optim.batch=4", "optim.warmup=10", "optim.lr=2e-3",
        "architecture.layers=1", "architecture.heads=2", "architecture.ffn_dim=64", "save_every=100",
        "data.size=16", "schedule.chunk=2", "schedule.noisy_chunks=2", "schedule.steps=4",
    ])
    summary = train(config, progress=False)
    assert summary["loss_last_50"] < 0.8 * summary["loss_first_50"]
    model = SkyReelsV2Transformer3DModel.from_pretrained(tmp_path / "model", subfolder="transformer")
    assert model.config.num_layers == 1 and (tmp_path / "model" / "training.json").is_file()


def test_a_stills_phase_with_window_steps_trains_and_reports_both_losses(tmp_path):
    config = load_train_config([], [f"out={tmp_path / 'model'}", "optim.steps=6", *MICRO_TRAINING,
                                    "data.stills_every=1", "data.windows_every=2", "data.stills_max_objects=2",
                                    "data.stills_frames=3", "data.stills_batch=6"])
    summary = train(config, progress=False)
    assert summary["steps"] == 6
    assert 0 < summary["loss_last_50"] < 10 and 0 < summary["stills_loss_last_50"] < 10
    assert re.fullmatch(r"loss [\d.]+ -> [\d.]+; stills [\d.]+ -> [\d.]+", describe_losses(summary))


def test_a_stills_only_run_reports_the_stills_loss_alone(tmp_path):
    config = load_train_config([], [f"out={tmp_path / 'model'}", "optim.steps=3", *MICRO_TRAINING,
                                    "data.stills_every=1", "data.stills_batch=4", "data.stills_frames=3"])
    summary = train(config, progress=False)
    assert summary["steps"] == 3 and 0 < summary["stills_loss_last_50"] < 10
    assert "loss_first_50" not in summary  # no video window was trained on
    assert re.fullmatch(r"stills [\d.]+ -> [\d.]+", describe_losses(summary))


def test_stills_draw_their_own_number_of_objects(tmp_path, monkeypatch):
    import training.recipe.train

    asked = []

    def recording_still_clips(batch, max_objects, *rest):
        asked.append(max_objects)
        return still_clips(batch, max_objects, *rest)

    monkeypatch.setattr(training.recipe.train, "still_clips", recording_still_clips)
    overrides = [*MICRO_TRAINING, "optim.steps=2", "data.stills_every=1", "data.stills_batch=2", "data.max_objects=3"]
    train(load_train_config([], [f"out={tmp_path / 'a'}", *overrides, "data.stills_max_objects=1"]), progress=False)
    train(load_train_config([], [f"out={tmp_path / 'b'}", *overrides]), progress=False)
    assert asked == [1, 1, 3, 3]  # stills_max_objects, then max_objects when it is 0
