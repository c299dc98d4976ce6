"""Outline-weighted loss: which pixels count as outlines, and that the weighting reduces to the plain mean."""

import pytest
import torch
import torch.nn.functional as F

from actors.codecs import from_uint8
from orchestrator.errors import UserError
from tests.tiny_models import MICRO_TRAINING
from training.config import load_train_config
from training.edge_weight import outline, pixel_weights
from training.train import train, weighted_loss
from training.world import Body, ObjectSpec, background_at, render


def clip_of(*bodies: Body) -> torch.Tensor:
    """[1, 3, 1, 32, 32]: one frame of the bodies over the background."""
    frame = render(bodies, 32, background_at(0, 8.0, 0.0))  # [32, 32, 3] uint8
    return from_uint8(torch.from_numpy(frame[None]))[None]


def test_outline_rings_a_square_and_leaves_its_middle_and_the_background():
    square = clip_of(Body(ObjectSpec("square", "red"), 5.0, 16.0, 16.0, 0.0, 0.0))  # covers pixels 11..20
    ring = outline(square)[0, 0, 0]  # [32, 32]
    assert ring[11, 11] and ring[11, 20] and ring[20, 20] and ring[10, 15]  # corners, and just outside an edge
    assert not ring[15, 15] and not ring[2, 2] and not ring[16, 27]  # middle, background
    assert not outline(clip_of()).any()  # the background alone


def test_weights_are_one_off_the_outline_and_one_plus_the_weight_on_it():
    square = clip_of(Body(ObjectSpec("square", "blue"), 5.0, 16.0, 16.0, 0.0, 0.0))
    weights = pixel_weights(square, 4.0)
    assert set(weights.unique().tolist()) == {1.0, 5.0}
    assert (weights == 5.0).equal(outline(square))


def test_unit_weights_give_the_plain_mean_over_scored_frames():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 3, 4, 8, 8, generator=generator)  # [B, 3, F, H, W]
    target = torch.randn(2, 3, 4, 8, 8, generator=generator)
    scored = torch.tensor([[False, True, True, True], [False, False, True, True]])  # [B, F]
    plain = F.mse_loss(prediction.permute(0, 2, 1, 3, 4)[scored], target.permute(0, 2, 1, 3, 4)[scored])
    torch.testing.assert_close(weighted_loss(prediction, target, torch.ones(2, 1, 4, 8, 8), scored), plain)
    heavier = torch.ones(2, 1, 4, 8, 8)
    heavier[:, :, :, :4] = 3.0  # top halves count three times
    top, bottom = ((prediction - target) ** 2).permute(0, 2, 1, 3, 4)[scored].split(4, dim=-2)
    expected = (3 * top.sum() + bottom.sum()) / (3 * top.numel() + bottom.numel())
    torch.testing.assert_close(weighted_loss(prediction, target, heavier, scored), expected)


def test_a_negative_edge_weight_is_named():
    with pytest.raises(UserError, match="loss.edge_weight must be >= 0"):
        load_train_config([], ["loss.edge_weight=-1"])


def test_training_with_outline_weights_runs(tmp_path):
    config = load_train_config([], [f"out={tmp_path / 'model'}", "optim.steps=4", *MICRO_TRAINING,
                                    "loss.edge_weight=4"])
    summary = train(config, progress=False)
    assert summary["steps"] == 4 and 0 < summary["loss_last_50"] < 10
