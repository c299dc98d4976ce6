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
    chosen = torch.rand(context.shape[0], generator=generator) < share  # [B]
    if not chosen.any():
        return context
    sigma = torch.rand(int(chosen.sum()), generator=generator) * max_sigma  # [b], the chosen samples only
    sigma_frames = sigma[:, None].expand(-1, context.shape[2])  # [b, F]
    x, _ = noisy_inputs(context[chosen], sigma_frames, generator)  # [b, 3, F, H, W]
    velocity = model(hidden_states=x, timestep=sigma_frames * TRAIN_TIMESTEPS, encoder_hidden_states=text[chosen],
                     enable_diffusion_forcing=True, return_dict=False)[0]
    mixed = context.clone()
    mixed[chosen] = (x - sigma[:, None, None, None, None] * velocity).clamp(-1, 1)
    return mixed
