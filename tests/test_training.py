"""The progressive recipe: level bookkeeping of training samples, and a micro training run that learns."""

import re

import numpy as np
import pytest
import torch
from diffusers import SkyReelsV2Transformer3DModel

from orchestrator.config import ScheduleConfig
from orchestrator.errors import UserError
from orchestrator.schedule import Geometry, sigma_of
from tests.tiny_models import MICRO_TRAINING, tiny_transformer
from training.config import load_train_config
from training.own_context import own_context
from training.probe import segment
from training.recipe import OFFSET_SCALE, WindowShape, training_sigmas, window_shape
from training.stills import MIN_U, still_clips, still_sigmas
from training.train import context_sigmas, describe_losses, frame_sigmas, is_still_step, loss_frames, train
from training.world import parse_caption

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


def test_noisy_context_has_one_level_per_sample_and_stays_out_of_the_loss():
    generator = torch.Generator().manual_seed(3)
    shape = WindowShape(0, 3, True)
    noisy = load_train_config([], ["data.context_noise=0.3"])
    sig = frame_sigmas(GEOMETRY, shape, training_sigmas(GEOMETRY, shape, 500, generator),
                       context_sigmas(noisy, 500, generator))  # [B, 3 context + 12 noisy frames]
    context = sig[:, :3]
    assert (context == context[:, :1]).all() and context.min() >= 0 and context.max() <= 0.3
    assert context.std() > 0.05  # drawn, not fixed
    assert (context_sigmas(load_train_config([], []), 500, generator) == 0).all()


def test_the_loss_leaves_out_the_context_and_level_zero():
    sig = torch.tensor([[0.2, 0.2, 0.0, 0.5], [0.0, 0.0, 0.3, 0.9]])  # [B, F]: 2 context frames, 2 noisy
    assert loss_frames(sig, 2).tolist() == [[False, False, False, True], [False, False, True, True]]


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


def test_still_steps_are_the_last_of_every_group():
    config = load_train_config([], ["data.stills_every=3"])
    assert [step for step in range(9) if is_still_step(config, step)] == [2, 5, 8]
    assert all(is_still_step(load_train_config([], ["data.stills_every=1"]), step) for step in range(9))
    assert not any(is_still_step(load_train_config([], []), step) for step in range(9))
    mostly_stills = load_train_config([], ["data.stills_every=1", "data.windows_every=4"])
    assert [step for step in range(9) if not is_still_step(mostly_stills, step)] == [3, 7]


@pytest.mark.parametrize("override, message", [
    (["data.stills_every=-1"], "data.stills_every must be 0 (no stills), 1 (stills only) or more"),
    (["data.stills_every=2", "data.stills_batch=0"], "data.stills_batch and data.stills_frames must be >= 1"),
    (["data.stills_every=2", "data.stills_frames=0"], "got 64, 0 and 1.5"),
    (["data.stills_every=2", "data.windows_every=4"], "data.windows_every must be 0 or, with data.stills_every=1"),
    (["data.stills_every=1", "data.windows_every=-1"], "data.windows_every must be 0 or"),
    (["data.max_objects=0"], "data.max_objects must be in 1..7 (the world's colours), got 0"),
    (["data.stills_max_objects=8"], "data.stills_max_objects must be in 0..7"),
    (["data.context_noise=1.5"], "data.context_noise must be in [0, 1]"),
    (["data.context_noise=0.2", "data.own_context=0.5"], "choose one"),
    (["schedule.context_level=1"], "train for it with data.context_noise"),
    (["schedule.stochasticity=0.5"], "schedule.stochasticity is a sampling setting"),
])
def test_bad_data_settings_are_named(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_train_config([], override)


def test_micro_training_lowers_the_loss_and_round_trips(tmp_path):
    config = load_train_config([], [
        f"out={tmp_path / 'model'}", "optim.steps=150", "optim.batch=4", "optim.warmup=10", "optim.lr=2e-3",
        "architecture.layers=1", "architecture.heads=2", "architecture.ffn_dim=64", "save_every=100",
        "data.size=16", "data.own_context=0.5", "schedule.chunk=2", "schedule.noisy_chunks=2", "schedule.steps=4",
    ])
    summary = train(config, progress=False)
    assert summary["loss_last_50"] < 0.8 * summary["loss_first_50"]
    model = SkyReelsV2Transformer3DModel.from_pretrained(tmp_path / "model", subfolder="transformer")
    assert model.config.num_layers == 1 and (tmp_path / "model" / "training.json").is_file()


def test_training_with_a_noisy_context_runs(tmp_path):
    config = load_train_config([], [f"out={tmp_path / 'model'}", "optim.steps=4", *MICRO_TRAINING,
                                    "data.context_noise=0.3", "data.fill_drain_fraction=0"])
    summary = train(config, progress=False)
    assert summary["steps"] == 4 and 0 < summary["loss_last_50"] < 10


def test_training_with_still_steps_reports_both_losses(tmp_path):
    config = load_train_config([], [f"out={tmp_path / 'model'}", "optim.steps=6", *MICRO_TRAINING,
                                    "data.stills_every=2", "data.stills_batch=6"])
    summary = train(config, progress=False)
    assert summary["steps"] == 6
    assert 0 < summary["loss_last_50"] < 10 and 0 < summary["stills_loss_last_50"] < 10


def test_a_stills_only_run_reports_the_stills_loss_alone(tmp_path):
    config = load_train_config([], [f"out={tmp_path / 'model'}", "optim.steps=3", *MICRO_TRAINING,
                                    "data.stills_every=1", "data.stills_batch=4", "data.stills_frames=3"])
    summary = train(config, progress=False)
    assert summary["steps"] == 3 and 0 < summary["stills_loss_last_50"] < 10
    assert "loss_first_50" not in summary  # no video window was trained on
    assert re.fullmatch(r"stills [\d.]+ -> [\d.]+", describe_losses(summary))


def test_own_context_is_the_models_estimate_of_a_noised_copy():
    model = tiny_transformer(3, 16)
    context = torch.rand(4, 3, 2, 8, 8) * 2 - 1  # [B, 3, F, H, W]
    text = torch.randn(4, 5, 16)  # [B, L, D]
    same = own_context(model, context, text, share=0.0, max_sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, context)
    at_zero = own_context(model, context, text, share=1.0, max_sigma=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(at_zero, context)  # sigma 0: x0 = x, the context itself
    estimate = own_context(model, context, text, share=1.0, max_sigma=0.5, generator=torch.Generator().manual_seed(0))
    changed = (estimate - context).abs().flatten(1).amax(1)  # [B]
    assert (changed > 1e-3).all() and estimate.abs().max() <= 1


def test_stills_draw_their_own_number_of_objects(tmp_path, monkeypatch):
    import training.train

    asked = []

    def recording_still_clips(batch, max_objects, *rest):
        asked.append(max_objects)
        return still_clips(batch, max_objects, *rest)

    monkeypatch.setattr(training.train, "still_clips", recording_still_clips)
    overrides = [*MICRO_TRAINING, "optim.steps=2", "data.stills_every=1", "data.stills_batch=2", "data.max_objects=3"]
    train(load_train_config([], [f"out={tmp_path / 'a'}", *overrides, "data.stills_max_objects=1"]), progress=False)
    train(load_train_config([], [f"out={tmp_path / 'b'}", *overrides]), progress=False)
    assert asked == [1, 1, 3, 3]  # stills_max_objects, then max_objects when it is 0


def test_frozen_parameters_leave_training_as_they_came(tmp_path):
    from tests.tiny_models import MINILM_DIM

    tiny_transformer(3, MINILM_DIM).save_pretrained(tmp_path / "base" / "transformer")
    base = dict(SkyReelsV2Transformer3DModel.from_pretrained(tmp_path / "base", subfolder="transformer")
                .named_parameters())
    architecture = ["architecture.patch=2", "architecture.heads=2", "architecture.head_dim=8",
                    "architecture.ffn_dim=32", "architecture.layers=2"]
    config = load_train_config([], [*MICRO_TRAINING, *architecture, f"init_from={tmp_path / 'base'}",
                                    f"out={tmp_path / 'out'}", "optim.steps=3", "optim.lr=1e-2",
                                    "optim.frozen=[attn2,text_embedder]"])
    train(config, progress=False)
    trained = SkyReelsV2Transformer3DModel.from_pretrained(tmp_path / "out", subfolder="transformer")
    for name, parameter in trained.named_parameters():
        same = torch.equal(parameter, base[name])
        assert same == ("attn2" in name or "text_embedder" in name), name
    config.optim.frozen = ["attn3"]
    with pytest.raises(UserError, match="optim.frozen: no parameter name contains 'attn3'"):
        train(config, progress=False)
