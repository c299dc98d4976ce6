"""Analytic oracle: a stationary Gaussian video process whose exact posterior-mean velocity has a closed form.

Frames x0_f follow AR(1) in time, x0_f = rho * x0_{f-1} + sqrt(1 - rho^2) * xi_f, where xi_f is a
stationary spatial field with power spectrum lambda(k) (mean 1, so each pixel has unit variance).
In the orthonormal 2-D Fourier basis every spatial mode k is independent with temporal covariance
lambda(k) * Sigma, Sigma_ij = rho^|i - j|. With per-frame noise x_f = (1 - s_f) x0_f + s_f eps_f and
D = diag(1 - s), the posterior mean per mode is

    E[x0 | x] = lambda Sigma D (lambda D Sigma D + diag(s^2))^-1 x,

and the rectified-flow velocity E[eps - x0 | x] = (x - E[x0 | x]) / s for s > 0.
"""

from __future__ import annotations

import math

import torch

from actors.backends.collective import StageGroup
from actors.codecs import IdentityCodec
from orchestrator.core.config import ModelConfig


def power_spectrum(height: int, width: int, exponent: float, k0: float) -> torch.Tensor:
    """lambda(k) ~ (|k|^2 + k0^2)^(-exponent/2) on the FFT grid, normalised to mean 1: [H, W] float64."""
    ky = torch.fft.fftfreq(height, dtype=torch.float64) * height  # [H] cycles per frame
    kx = torch.fft.fftfreq(width, dtype=torch.float64) * width  # [W]
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2  # [H, W]
    spectrum = (k2 + k0**2) ** (-exponent / 2)
    return spectrum / spectrum.mean()


def temporal_covariance(frames: int, rho: float) -> torch.Tensor:
    """Sigma_ij = rho^|i - j|: [F, F] float64."""
    idx = torch.arange(frames, dtype=torch.float64)
    return rho ** (idx[:, None] - idx[None, :]).abs()


def gaussian_codec(cfg: ModelConfig) -> IdentityCodec:
    """Frames are rendered directly; +-3 standard deviations fill the colour range."""
    return IdentityCodec(cfg.channels, scale=1 / 3)


class GaussianProcessBackend:
    """The exact velocity of the AR(1) x spectral Gaussian process; conditioning is ignored."""

    def __init__(self, cfg: ModelConfig):
        self.rho = cfg.rho
        self.latent_shape = (cfg.channels, cfg.height, cfg.width)
        self.spectrum = power_spectrum(cfg.height, cfg.width, cfg.spectrum_exponent, cfg.spectrum_k0)
        self.levels, self.mode_level = torch.unique(self.spectrum.flatten(), return_inverse=True)  # [U], [HW]
        self.codec = gaussian_codec(cfg)
        self.device = torch.device("cpu")

    def encode_prompt(self, text: str) -> None:
        return None

    def join_conds(self, conds: list[None]) -> None:
        return None

    def blend_conds(self, before: None, after: None, weight: float) -> None:
        return None

    def sample_clip(self, frames: int, generator: torch.Generator) -> torch.Tensor:
        """A draw from the process itself: [Ch, F, H, W] float32 (for tests and initial clips)."""
        ch, h, w = self.latent_shape
        white = torch.randn((ch, frames, h, w), generator=generator, dtype=torch.float64)
        field = torch.fft.ifft2(torch.fft.fft2(white, norm="ortho") * self.spectrum.sqrt(), norm="ortho").real
        out = torch.empty_like(field)
        out[:, 0] = field[:, 0]
        for f in range(1, frames):
            out[:, f] = self.rho * out[:, f - 1] + math.sqrt(1 - self.rho**2) * field[:, f]
        return out.float()

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """E[x0 | x] for x [B, Ch, F, H, W] with per-frame levels sigma [B, F], at the frames `rows` only."""
        b, ch, f, h, w = x.shape
        s = sigma.to(torch.float64)  # [B, F]
        keep = 1 - s  # [B, F] diagonal of D
        cov = temporal_covariance(f, self.rho)  # [F, F]
        lam = self.levels.view(1, -1, 1, 1)  # [1, U, 1, 1]
        dsd = keep[:, None, :, None] * cov * keep[:, None, None, :]  # [B, 1, F, F]
        system = lam * dsd + torch.diag_embed(s**2)[:, None]  # [B, U, F, F]
        cross = lam * cov[rows] * keep[:, None, None, :]  # [B, U, R, F] = rows of lambda Sigma D
        gain = torch.linalg.solve(system, cross, left=False)  # [B, U, R, F] = cross @ system^-1
        spec = torch.fft.fft2(x.to(torch.float64), norm="ortho")  # [B, Ch, F, H, W] complex
        modes = spec.permute(0, 3, 4, 2, 1).reshape(b, h * w, f, ch)  # [B, HW, F, Ch]
        per_mode_gain = gain[:, self.mode_level]  # [B, HW, R, F]
        mean = per_mode_gain.to(modes.dtype) @ modes  # [B, HW, R, Ch]
        mean = mean.reshape(b, h, w, gain.shape[-2], ch).permute(0, 4, 3, 1, 2)  # [B, Ch, R, H, W]
        return torch.fft.ifft2(mean, norm="ortho").real

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: None = None) -> torch.Tensor:
        """E[eps - x0 | x] = (x - E[x0 | x]) / sigma; zero on clean frames, which are never updated."""
        return self._velocity_at(x, sigma, x, sigma)

    def shared_velocity(self, group: StageGroup, x: torch.Tensor, sigma: torch.Tensor, cond: None,
                        frames: tuple[int, ...]) -> torch.Tensor:
        """A joint call: the window's latents and levels are gathered from the stages (they are small) and the
        posterior is solved for this stage's frames only. x [B, Ch, F_j, H, W], sigma [B, F_j] -> v like x."""
        window, levels, mine = group.gather_window(x, sigma, list(frames))  # [B, Ch, F, H, W], [B, F]
        if not x.shape[2]:  # an empty band brings nothing and needs nothing
            return torch.empty_like(x)
        return self._velocity_at(window, levels, x, sigma, mine)

    def _velocity_at(self, window: torch.Tensor, levels: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                     rows: slice = slice(None)) -> torch.Tensor:
        """The velocity at the frames `rows` of `window` (levels [B, F]), whose latents and levels are x, sigma."""
        x0 = self.posterior_mean(window, levels, rows)  # [B, Ch, R, H, W]
        s = sigma.to(torch.float64)[:, None, :, None, None]  # [B, 1, R, 1, 1]
        v = torch.where(s > 0, (x.to(torch.float64) - x0) / s.clamp_min(1e-12), torch.zeros_like(x0))
        return v.to(x.dtype)
