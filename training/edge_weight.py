"""Per-pixel loss weights that stress object outlines, where one shape differs from another."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EDGE_STEP = 0.1  # a colour step above this between 4-neighbours (in [-1, 1] units, any channel) is an outline


def outline(clean: torch.Tensor) -> torch.Tensor:
    """[B, 1, F, H, W] bool: pixels of clean frames [B, 3, F, H, W] within one pixel of a colour step."""
    b, _, f, h, w = clean.shape
    frames = clean.permute(0, 2, 1, 3, 4).reshape(b * f, -1, h, w)  # [B*F, 3, H, W]
    across = (frames[..., :, 1:] - frames[..., :, :-1]).abs().amax(1) > EDGE_STEP  # [B*F, H, W-1]
    down = (frames[..., 1:, :] - frames[..., :-1, :]).abs().amax(1) > EDGE_STEP  # [B*F, H-1, W]
    step = torch.zeros(b * f, h, w, dtype=torch.bool)
    step[..., :, 1:] |= across
    step[..., :, :-1] |= across
    step[..., 1:, :] |= down
    step[..., :-1, :] |= down
    near = F.max_pool2d(step[:, None].float(), 3, stride=1, padding=1) > 0  # [B*F, 1, H, W]
    return near.reshape(b, f, 1, h, w).permute(0, 2, 1, 3, 4)


def pixel_weights(clean: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """[B, 1, F, H, W]: 1 + edge_weight on and around object outlines of clean [B, 3, F, H, W], 1 elsewhere."""
    if not edge_weight:
        return torch.ones_like(clean[:, :1])  # the plain mean: no outline to find on every training step
    return 1 + edge_weight * outline(clean).float()
