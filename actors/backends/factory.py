"""Build the backend a model config names."""

from __future__ import annotations

from actors.backends.base import Backend
from orchestrator.config import ModelConfig


def build_backend(cfg: ModelConfig) -> Backend:
    """gaussian -> the analytic oracle; diffusers -> a SkyReels-V2 transformer from `cfg.path`."""
    if cfg.backend == "gaussian":
        from actors.backends.gaussian import GaussianProcessBackend

        return GaussianProcessBackend(cfg)
    from actors.backends.skyreels import SkyReelsBackend

    return SkyReelsBackend(cfg)
