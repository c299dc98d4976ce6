"""The analytic Gaussian oracle reproduces its own process through the progressive sampler."""

import pytest
import torch

from actors.backends.gaussian import GaussianProcessBackend
from orchestrator.core.config import ModelConfig, ScheduleConfig
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.core.schedule import Geometry

RHO = 0.9


def generate(context_chunks: int, steps: int, frames: int = 2000, shift: float = 1.0) -> torch.Tensor:
    """A long single-channel 16x16 video from the oracle: [F, H, W] float64."""
    backend = GaussianProcessBackend(ModelConfig(channels=1, height=16, width=16, rho=RHO))
    g = Geometry.from_config(
        ScheduleConfig(chunk=5, noisy_chunks=6, steps=steps, context_chunks=context_chunks, shift=shift)
    )
    chunks = sample(backend.velocity, g, frames // g.chunk, NoiseSource(0, (1, 5, 16, 16)), lambda m: None)
    return torch.cat([x for _, x in chunks], dim=1)[0].double()


def statistics(video: torch.Tensor) -> tuple[float, list[float]]:
    """Sample variance and lag-1..3 autocorrelations (the process has mean 0)."""
    var = video.pow(2).mean().item()
    return var, [(video[:-k] * video[k:]).mean().item() / var for k in (1, 2, 3)]


@pytest.fixture(scope="module")
def video_s60():
    return generate(context_chunks=1, steps=60)


def test_process_statistics_match_the_truth(video_s60):
    var, lags = statistics(video_s60)
    for k, lag in enumerate(lags, start=1):
        assert abs(lag - RHO**k) < 0.01, (k, lag)
    assert abs(var - 1) < 0.06, var


def test_variance_error_shrinks_with_more_steps(video_s60):
    var_12, _ = statistics(generate(context_chunks=1, steps=12, frames=1000))
    var_60, _ = statistics(video_s60)
    assert abs(1 - var_60) < abs(1 - var_12)


def seam_lag1(video: torch.Tensor, chunk: int = 5) -> float:
    """Lag-1 correlation of frame pairs that straddle a chunk boundary."""
    pairs = (video[:-1] * video[1:]).mean(dim=(1, 2))  # [F-1]
    seam = (torch.arange(len(pairs)) + 1) % chunk == 0
    return pairs[seam].mean().item() / video.pow(2).mean().item()


def test_without_context_the_lag1_correlation_is_biased(video_s60):
    """The paper's context-chunk ablation: with K = 0 the frames across chunk seams decorrelate."""
    bias_k1 = RHO - seam_lag1(video_s60)
    bias_k0 = RHO - seam_lag1(generate(context_chunks=0, steps=60))
    assert bias_k0 > 0.01 and abs(bias_k1) < 0.006, (bias_k0, bias_k1)


def test_clip_of_the_process_has_the_truth_statistics():
    backend = GaussianProcessBackend(ModelConfig(channels=1, height=16, width=16, rho=RHO, spectrum_exponent=2))
    clip = backend.sample_clip(2000, torch.Generator().manual_seed(1))[0].double()
    var, lags = statistics(clip)
    assert abs(var - 1) < 0.05 and abs(lags[0] - RHO) < 0.01


def test_velocity_is_exact_for_a_single_clean_plus_noisy_pair():
    """With one clean frame and one frame at sigma=1 the posterior mean of the second is rho * first."""
    backend = GaussianProcessBackend(ModelConfig(channels=1, height=4, width=4, rho=RHO))
    x = torch.randn(1, 1, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([[0.0, 1.0]])
    x0 = backend.posterior_mean(x, sigma)
    torch.testing.assert_close(x0[:, :, 1], RHO * x[:, :, 0])
    torch.testing.assert_close(x0[:, :, 0], x[:, :, 0])
