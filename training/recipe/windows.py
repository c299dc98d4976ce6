"""The progressive training recipe (docs/design.md §1): per-chunk staggered levels with one offset per sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orchestrator.core.schedule import Geometry, sigma_of

OFFSET_SCALE = 0.4  # delta = 0.4 * N(0, 1) * gap, gap = 1/N of the level range


@dataclass(frozen=True)
class WindowShape:
    """Which parts of the window a training sample shows: the present noisy positions and the context."""

    first: int  # oldest present noisy position
    last: int  # newest present noisy position (inclusive)
    context: bool  # clean context chunks in front


def window_shape(geometry: Geometry, fill_drain_fraction: float, generator: torch.Generator) -> WindowShape:
    """Mostly full windows; otherwise a filling one (newest positions only: the video start, with no context
    from nothing and, half the time, with the last chunks of a clip it continues as context) or a draining one
    (oldest positions only, with context: the video end)."""
    n, context = geometry.noisy, geometry.context > 0
    if n == 1 or torch.rand((), generator=generator).item() >= fill_drain_fraction:
        return WindowShape(0, n - 1, context)
    cut = int(torch.randint(1, n, (), generator=generator))
    if torch.rand((), generator=generator).item() < 0.5:
        return WindowShape(cut, n - 1, context and torch.rand((), generator=generator).item() < 0.5)
    return WindowShape(0, cut - 1, context)


def training_sigmas(geometry: Geometry, shape: WindowShape, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Noise levels [B, chunks] of the present noisy positions: one random substep k per sample, so chunk p
    sits at u = (s*(p+1) - k)/S, plus one offset delta per sample, clamped to [0, 1]; then the time shift."""
    s, n, steps = geometry.substeps, geometry.noisy, geometry.steps
    positions = torch.arange(shape.first, shape.last + 1, dtype=torch.float64)  # [P]
    k = torch.randint(0, s, (batch, 1), generator=generator).double()  # [B, 1]
    u = (s * (positions + 1) - k) / steps  # [B, P]
    delta = OFFSET_SCALE * torch.randn((batch, 1), generator=generator, dtype=torch.float64) / n  # [B, 1]
    return sigma_of((u + delta).clamp(0, 1), geometry.shift).float()  # [B, P]


def noisy_inputs(
    clean: torch.Tensor, sigma_frames: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x = (1 - sigma) x0 + sigma eps and the velocity target v = eps - x0, for clean [B, Ch, F, H, W] and
    per-frame levels [B, F]."""
    eps = torch.randn(clean.shape, generator=generator)  # [B, Ch, F, H, W]
    sig = sigma_frames[:, None, :, None, None]  # [B, 1, F, 1, 1]
    return (1 - sig) * clean + sig * eps, eps - clean
