"""One chunk's step between two levels of the rectified flow: Euler, the posterior (DDIM) family, DPM-Solver++."""

from __future__ import annotations

import math

import torch

# The flow x_s = alpha_s x0 + s eps with alpha_s = 1 - s; lambda_s = log(alpha_s / s) is its half log-SNR, and a step
# s -> s' < s gains h = lambda_s' - lambda_s > 0, e^-h = s'(1 - s) / (s(1 - s')). A velocity v ~ eps - x0 gives the
# clean estimate x0 = x - s v. Multistep solvers extrapolate a chunk's clean estimates along its own levels.

SOLVER_ORDER = {"euler": 1, "dpmpp_2m": 2, "dpmpp_3m": 3}  # schedule.solver -> clean estimates a step combines


def flow_step(x: torch.Tensor, v: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The Euler step x + (s' - s) v along the velocity v ~ eps - x0; equals posterior_step at eta 0 with the clean
    estimate x - s v, up to rounding."""
    return x + (sigma_to - sigma_from) * v


def clean_estimate(x: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x - s v, the model's estimate of the clean chunk."""
    return x - sigma * v


def half_log_snr(sigma: float) -> float:
    """lambda_s = log((1 - s) / s): -inf at s = 1, +inf at s = 0."""
    if sigma >= 1:
        return -math.inf
    return math.log(1 - sigma) - math.log(sigma) if sigma > 0 else math.inf


def posterior_noise(sigma_from: float, sigma_to: float, eta: float) -> float:
    """c = eta sqrt(1 - e^-2h): the share of fresh noise in x_s' at which eta 1 samples the flow's posterior.

    The flow's transition x_s = (alpha_s / alpha_s') x_s' + sigma_{s|s'} z, sigma_{s|s'}^2 = s^2 - (alpha_s s' /
    alpha_s')^2, has the posterior q(x_s' | x_s, x0) of variance sigma_{s|s'}^2 s'^2 / s^2 (Kingma et al. 2021,
    arXiv 2107.00630, eq. 32-33): in DDIM's form x_s' = alpha_s' x0 + sqrt(s'^2 - (s' c)^2) eps + s' c z (Song et
    al. 2020, arXiv 2010.02502, eq. 12 and 16) that is s' c with c = sqrt(1 - e^-2h)."""
    ratio = sigma_to * (1 - sigma_from) / (sigma_from * (1 - sigma_to))  # e^-h; 0 at s = 1 or s' = 0
    return eta * math.sqrt(1 - ratio**2)


def posterior_step(
    x: torch.Tensor, x0: torch.Tensor, sigma_from: float, sigma_to: float,
    eta: float = 0.0, fresh: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM's family for the flow: x' = (1 - s') x0 + s' (sqrt(1 - c^2) eps + c z) with eps = (x - (1 - s) x0) / s,
    c = posterior_noise(s, s', eta) and z the fresh noise. eta 0 is the deterministic step (Euler when x0 is the
    model's clean estimate), eta 1 the ancestral one; with the true x0 every eta gives x_s' its marginal."""
    eps = (x - (1 - sigma_from) * x0) / sigma_from  # [Ch, C, h, w]
    if fresh is None or not eta:
        return (1 - sigma_to) * x0 + sigma_to * eps
    c = posterior_noise(sigma_from, sigma_to, eta)
    return (1 - sigma_to) * x0 + sigma_to * (math.sqrt(1 - c**2) * eps + c * fresh)  # [Ch, C, h, w]


def effective_gain(sigma_from: float, sigma_to: float, eta: float) -> float:
    """h_eta with posterior_step's weight on the clean estimate alpha_s' (1 - e^-h_eta): h at eta 0, 2h at eta 1
    (the exponent of SDE-DPM-Solver++, Lu et al. 2022, arXiv 2211.01095, §4)."""
    h = half_log_snr(sigma_to) - half_log_snr(sigma_from)
    return h - 0.5 * math.log1p(-posterior_noise(sigma_from, sigma_to, eta) ** 2)


def multistep_estimate(
    x0: torch.Tensor, sigma_from: float, sigma_to: float, previous: list[tuple[torch.Tensor, float]], eta: float = 0.0
) -> torch.Tensor:
    """DPM-Solver++'s clean estimate D for the step s -> s', to take posterior_step(x, D, s, s', eta) with: from the
    model's estimate x0 at s and the chunk's previous ones (newest first, with the sigma of each one's level).

    The step integrates alpha_s' int_0^h_eta e^-(h_eta - u) x0 du over the clean estimate's Taylor expansion in lambda
    (Lu et al. 2022, arXiv 2211.01095, eq. 9-10; h_eta = effective_gain): D = x0 + (phi2 D1 - phi3 D2) / (1 -
    e^-h_eta) with phi2 = 1 - (1 - e^-h_eta) / h_eta, phi3 = phi2 / h_eta - 1/2, D1 ~ h x0' and D2 ~ h^2 x0''.
    One previous estimate x1 (2M, the paper's Alg. 2): D = x0 + D1_0 / 2, D1_0 = (x0 - x1) / r0, r0 = h1 / h. Two
    (3M, by backward differences as in k-diffusion's sample_dpmpp_3m_sde): D1 = D1_0 + r0 (D1_0 - D1_1) / (r0 + r1),
    D2 = 2 (D1_0 - D1_1) / (r0 + r1), D1_1 = (x1 - x2) / r1, r1 = h2 / h; exact for estimates quadratic in lambda
    (k-diffusion's D2 is half of this one). An estimate made at s = 1 (lambda = -inf) carries no slope and is
    dropped; the last step, to s' = 0 (h infinite), is first order (D = x0)."""
    previous = [(x, sig) for x, sig in previous if sig < 1]
    if not previous or sigma_to == 0:
        return x0
    lam = half_log_snr(sigma_from)
    h = half_log_snr(sigma_to) - lam
    x1, sigma1 = previous[0]
    r0 = (lam - half_log_snr(sigma1)) / h
    d1_0 = (x0 - x1) / r0  # [Ch, C, h, w]
    if len(previous) == 1:
        return x0 + 0.5 * d1_0
    x2, sigma2 = previous[1]
    r1 = (half_log_snr(sigma1) - half_log_snr(sigma2)) / h
    d1_1 = (x1 - x2) / r1  # [Ch, C, h, w]
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)  # [Ch, C, h, w] ~ h x0'
    d2 = (2 / (r0 + r1)) * (d1_0 - d1_1)  # [Ch, C, h, w] ~ h^2 x0''
    h_eta = effective_gain(sigma_from, sigma_to, eta)
    phi2 = 1 + math.expm1(-h_eta) / h_eta
    phi3 = phi2 / h_eta - 0.5
    return x0 + (phi2 * d1 - phi3 * d2) / -math.expm1(-h_eta)
