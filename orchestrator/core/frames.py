"""Frame counts: how many video frames a run of latent frames decodes to, for pixel-space models and causal VAEs."""

from __future__ import annotations

import math


class FrameCount:
    """How many video frames a run of latent frames decodes to: identity (temporal = None), or a causal VAE
    whose first latent frame gives one frame and every further latent frame gives `temporal` frames."""

    def __init__(self, temporal: int | None = None):
        self.temporal = temporal

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames needed to produce at least `video_frames` frames."""
        if self.temporal is None:
            return video_frames
        return 1 + math.ceil(max(video_frames - 1, 0) / self.temporal)

    def video_frames(self, latent_frames: int) -> int:
        """Frames produced by decoding `latent_frames` latent frames from the start of a video."""
        if self.temporal is None or latent_frames == 0:
            return latent_frames
        return 1 + self.temporal * (latent_frames - 1)
