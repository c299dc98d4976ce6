"""The contract every model backend fulfils, so samplers never branch on model type."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

import torch

from orchestrator.core.prompts import Blend


class Codec(Protocol):
    """Maps between latent frames and RGB video frames."""

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames needed to produce at least `video_frames` frames."""

    def video_frames(self, latent_frames: int) -> int:
        """Frames produced by decoding `latent_frames` latent frames from the start of a video."""

    def decoder(self) -> ChunkDecoder:
        """A fresh stateful decoder fed chunk by chunk, in order."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames [F, H, W, 3] -> latents [Ch, F', h, w]."""


class ChunkDecoder(Protocol):
    """Decodes a video chunk by chunk so memory never grows with length."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [Ch, C, h, w] -> uint8 RGB frames [f, H, W, 3]."""

    def state(self) -> dict[str, torch.Tensor]:
        """Everything carried from one chunk to the next, as named tensors (for checkpoints)."""

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from a state() taken earlier."""


class Backend(Protocol):
    """A velocity model: v = velocity(x[B, Ch, F, h, w], sigma[B, F], cond) with v ~ eps - x0."""

    codec: Codec
    latent_shape: tuple[int, int, int]  # (Ch, h, w) of one latent frame
    device: torch.device  # where it computes, and where a joint call's collectives run

    def encode_prompt(self, text: str) -> Any:
        """Prepare the conditioning of one prompt (a batch of one)."""

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """The model's velocity estimate, same shape as x."""

    def join_conds(self, conds: list[Any]) -> Any:
        """The conditioning of a batch whose rows are conditioned by `conds` (one per row, in order)."""

    def blend_conds(self, before: Any, after: Any, weight: float) -> Any:
        """The conditioning `weight` (0..1) of the way from one prompt's to another's (a prompt transition)."""

    def shared_velocity(self, group: Any, x: torch.Tensor, sigma: torch.Tensor, cond: Any,
                        frames: tuple[int, ...]) -> torch.Tensor:
        """A joint call (pipeline.parallel=context): the velocity of this stage's frames x [B, Ch, F_j, h, w] with
        the whole window in view, made together with the other stages of `group` (a StageGroup); `frames` gives
        each stage's latent frames, stage 0 first (at least two stages hold frames: a window one stage holds alone
        is its plain `velocity` call)."""


class PromptEncodings:
    """Each prompt (or blend of two) encoded once by a backend and reused for every call it conditions; the `keep`
    most recently used stay (a long-lived stage sees an endless stream of prompts)."""

    def __init__(self, backend: Backend, keep: int = 256):
        self.backend, self.keep = backend, keep
        self.cache: OrderedDict[str | Blend, Any] = OrderedDict()

    def get(self, prompt: str | Blend) -> Any:
        if prompt not in self.cache:
            self.cache[prompt] = (self.backend.encode_prompt(prompt) if isinstance(prompt, str) else
                                  self.backend.blend_conds(self.get(prompt.before), self.get(prompt.after),
                                                           prompt.weight))
            while len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        self.cache.move_to_end(prompt)
        return self.cache[prompt]
