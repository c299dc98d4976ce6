"""The step functions of orchestrator/core/solvers.py against the flow's own equations."""

import math

import pytest
import torch

from orchestrator.core.solvers import (
    clean_estimate,
    flow_step,
    half_log_snr,
    multistep_estimate,
    posterior_noise,
    posterior_step,
)

S, T = 0.7, 0.4  # a step from sigma s to s'


def test_the_deterministic_posterior_step_is_the_euler_step():
    x, v = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(posterior_step(x, clean_estimate(x, v, S), S, T), flow_step(x, v, S, T))


def test_eta_1_samples_the_flows_posterior_exactly():
    """With the true x0, x' - E[x_s' | x_s, x0] is the fresh noise times the posterior's standard deviation (Kingma
    et al. 2021, eq. 32-33 for alpha_s = 1 - s)."""
    x0, eps, z = torch.randn(3, 1000, dtype=torch.float64)
    x = (1 - S) * x0 + S * eps
    alpha = (1 - S) / (1 - T)  # alpha_{s|s'}
    var = S**2 - alpha**2 * T**2  # sigma_{s|s'}^2
    mean = alpha * T**2 / S**2 * x + (1 - T) * var / S**2 * x0
    torch.testing.assert_close(posterior_step(x, x0, S, T, 1.0, z) - mean, math.sqrt(var * T**2 / S**2) * z)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_every_eta_keeps_the_marginal(eta):
    x0, eps, z = torch.randn(3, 400_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    step = posterior_step((1 - S) * x0 + S * eps, x0, S, T, eta, z)
    noise = (step - (1 - T) * x0) / T  # the noise of x_s', standard normal for every eta
    assert abs(noise.var().item() - 1) < 0.01 and abs(noise.mean().item()) < 0.01
    assert abs(torch.corrcoef(torch.stack([noise, eps]))[0, 1].item() - math.sqrt(1 - posterior_noise(S, T, eta) ** 2)
               ) < 0.01


def test_no_fresh_noise_from_pure_noise_to_the_last_level():
    """From s = 1 the ancestral step draws all its noise afresh; a step to s' = 0 lands on the estimate."""
    assert posterior_noise(1.0, T, 1.0) == 1.0 and posterior_noise(S, T, 0.0) == 0.0
    x, x0, z = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(posterior_step(x, x0, S, 0.0, 1.0, z), x0)


def quadratic_in_lambda(coefficients: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0(lambda) = a + b lambda + c lambda^2 at the half log-SNR of sigma."""
    lam = half_log_snr(sigma)
    return coefficients[0] + coefficients[1] * lam + coefficients[2] * lam**2


def exact_step(x, coefficients, sigma, sigma_to, eta, z):
    """x at s' for a clean estimate quadratic in lambda, by the variation of constants: eta 0 the probability-flow
    ODE, x' = (s'/s) x + s' int e^l x0(l) dl; eta 1 the SDE, x' = (s'/s) e^-h x + 2 alpha' int e^(-2(lambda' - l))
    x0(l) dl + s' sqrt(1 - e^-2h) z (Lu et al. 2022, arXiv 2211.01095, eq. 9 and §4)."""
    a, b, c = coefficients
    lam, lam_to = half_log_snr(sigma), half_log_snr(sigma_to)
    h, k = lam_to - lam, 1 + eta  # k: the exponent's rate, 1 for the ODE and 2 for the SDE

    def antiderivative(u):  # of k e^(k u) (a + b u + c u^2)
        return math.exp(k * u) * (a + b * (u - 1 / k) + c * (u**2 - 2 * u / k + 2 / k**2))

    integral = (1 - sigma_to) * math.exp(-k * lam_to) * (antiderivative(lam_to) - antiderivative(lam))
    noise = sigma_to * math.sqrt(1 - math.exp(-2 * h)) * z if eta else 0
    return sigma_to / sigma * math.exp(-eta * h) * x + integral + noise


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp_3m_is_exact_for_clean_estimates_quadratic_in_log_snr(eta):
    coefficients = torch.randn(3, 5, dtype=torch.float64)
    x, z = torch.randn(2, 5, dtype=torch.float64)
    levels = [0.8, 0.6, 0.45, 0.3]  # s_2, s_1, s, s'
    previous = [(quadratic_in_lambda(coefficients, sig), sig) for sig in levels[1::-1]]  # newest first
    estimate = multistep_estimate(quadratic_in_lambda(coefficients, levels[2]), levels[2], levels[3], previous, eta)
    torch.testing.assert_close(posterior_step(x, estimate, levels[2], levels[3], eta, z),
                               exact_step(x, coefficients, levels[2], levels[3], eta, z))


def test_dpmpp_2m_is_algorithm_2_of_the_paper():
    """x' = (s'/s) x - alpha' (e^-h - 1) ((1 + 1/(2r)) x0 - 1/(2r) x1), r = h_prev / h."""
    x, x0, x1 = torch.randn(3, 5, dtype=torch.float64)
    prev, h = half_log_snr(S) - half_log_snr(0.85), half_log_snr(T) - half_log_snr(S)
    r = prev / h
    expected = T / S * x - (1 - T) * math.expm1(-h) * ((1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x1)
    torch.testing.assert_close(posterior_step(x, multistep_estimate(x0, S, T, [(x1, 0.85)]), S, T), expected)


def test_estimates_from_pure_noise_are_dropped_and_the_last_step_is_first_order():
    x0, x1, x2 = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(multistep_estimate(x0, S, T, [(x1, 1.0)]), x0)
    second_order = multistep_estimate(x0, S, T, [(x1, 0.85)])
    assert torch.equal(multistep_estimate(x0, S, T, [(x1, 0.85), (x2, 1.0)]), second_order)
    assert torch.equal(multistep_estimate(x0, S, 0.0, [(x1, 0.85), (x2, 0.9)]), x0)
    assert torch.equal(multistep_estimate(x0, S, T, []), x0)
