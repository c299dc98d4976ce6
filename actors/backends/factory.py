"""Build the backend, codec or frame arithmetic a model config names."""

from __future__ import annotations

import dataclasses

from actors.backends.base import Backend, Codec
from orchestrator.core.config import ModelConfig
from orchestrator.core.frames import FrameCount
from orchestrator.state.settings import resolve_model_path


def _resolved(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, path=resolve_model_path(cfg.path))


def build_backend(cfg: ModelConfig) -> Backend:
    """gaussian -> the analytic oracle; diffusers -> a SkyReels-V2 transformer from `cfg.path`."""
    if cfg.backend == "gaussian":
        from actors.backends.gaussian import GaussianProcessBackend

        return GaussianProcessBackend(cfg)
    from actors.backends.skyreels import SkyReelsBackend

    return SkyReelsBackend(_resolved(cfg))


def build_codec(cfg: ModelConfig) -> Codec:
    """The codec alone, for a process that decodes but never calls the model (the sink)."""
    if cfg.backend == "gaussian":
        from actors.backends.gaussian import gaussian_codec

        return gaussian_codec(cfg)
    from actors.backends.skyreels import skyreels_codec

    return skyreels_codec(_resolved(cfg))


def frame_count(cfg: ModelConfig) -> FrameCount:
    """Latent <-> video frame arithmetic without loading any weights (the controller)."""
    if cfg.backend == "gaussian":
        return FrameCount()
    from actors.backends.skyreels import skyreels_frame_count

    return skyreels_frame_count(_resolved(cfg))
