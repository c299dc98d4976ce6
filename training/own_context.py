"""Context chunks made imperfect like the model's own: its one-step estimate of a noised copy of the truth."""

from __future__ import annotations

import torch

from actors.backends.skyreels import TRAIN_TIMESTEPS
from training.recipe import noisy_inputs


@torch.no_grad()
def own_context(model, context: torch.Tensor, text: torch.Tensor, share: float, max_sigma: float,
                generator: torch.Generator) -> torch.Tensor:
    """For a random `share` of the samples, replace the clean context [B, 3, F, H, W] by x0 = x - sigma*v: the
    model's estimate from x, the context noised to one level per sample drawn from [0, max_sigma]. At generation
    the context is the model's own output; training on such estimates teaches it to restore, not to copy, it."""
    batch, frames = context.shape[0], context.shape[2]
    chosen = torch.rand(batch, generator=generator) < share  # [B]
    if not chosen.any():
        return context
    sigma = torch.rand(batch, generator=generator) * max_sigma * chosen  # [B]; 0 where not chosen
    sigma_frames = sigma[:, None].expand(batch, frames)  # [B, F]
    x, _ = noisy_inputs(context, sigma_frames, generator)  # [B, 3, F, H, W]
    velocity = model(hidden_states=x, timestep=sigma_frames * TRAIN_TIMESTEPS, encoder_hidden_states=text,
                     enable_diffusion_forcing=True, return_dict=False)[0]
    estimate = (x - sigma[:, None, None, None, None] * velocity).clamp(-1, 1)
    return torch.where(chosen[:, None, None, None, None], estimate, context)
