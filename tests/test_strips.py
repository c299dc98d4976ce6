"""The strip layout of joint SkyReels calls: the same patches in the same token order as the frames, shares of
the window that differ by at most one row of patches."""

import pytest
import torch

from actors.backends.skyreels_joint import JointCalls, Strips


@pytest.mark.parametrize("patch", [(1, 4, 4), (2, 2, 2), (1, 1, 1)])
def test_strips_hold_the_frames_patches_in_token_order(patch):
    strips = Strips(patch)
    x = torch.randn(2, 3, 6, 8, 8)  # [B, Ch, F, h, w]
    sigma = torch.rand(2, 6)  # [B, F]
    cut, levels = strips.cut(x, sigma)
    assert cut.shape == (2, 3, strips.count(6, 8), patch[1], 8)
    assert torch.equal(strips.join(cut, 8), x)
    assert strips.join(cut[:, :, :0], 8).shape == (2, 3, 0, 8, 8)  # an empty share
    embed = torch.nn.Conv3d(3, 5, patch, stride=patch)  # the model's patch embedding
    torch.testing.assert_close(embed(cut).flatten(2), embed(x).flatten(2), rtol=0, atol=1e-6)  # [B, 5, tokens]
    per_token = sigma.unflatten(1, (-1, patch[0]))[..., 0]  # [B, F']: a temporal patch's first frame
    by_strip = levels.unflatten(1, (-1, patch[0]))[..., 0]  # [B, S / p_t]
    assert torch.equal(by_strip, per_token.repeat_interleave(8 // patch[1], dim=1))


def test_the_shipped_window_splits_into_equal_shares():
    from diffusers import SkyReelsV2Transformer3DModel

    from orchestrator.state.settings import resolve_model_path

    transformer = SkyReelsV2Transformer3DModel.from_pretrained(resolve_model_path("builtin:tiny"),
                                                               subfolder="transformer")
    joint = JointCalls(transformer)
    held = joint.held_strips((6, 9), 32)  # 15 frames of 32x32 latents, the oldest band with the context
    assert held == [48, 72]
    assert joint.even_strips(held, 2) == [60, 60]  # whole frames would be 8 and 7
    assert joint.even_strips(joint.held_strips((3, 3, 9), 32), 3) == [40, 40, 40]
