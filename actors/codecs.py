"""Latent <-> RGB codecs: identity for pixel-space models, a streaming AutoencoderKLWan otherwise."""

from __future__ import annotations

import torch

from orchestrator.core.frames import FrameCount


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB [3, F, H, W] -> uint8 frames [F, H, W, 3]."""
    pixels = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [3, F, H, W]
    return pixels.permute(1, 2, 3, 0).contiguous()


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> [-1, 1] RGB [3, F, H, W]."""
    return frames.permute(3, 0, 1, 2).float() / 127.5 - 1


def as_rgb(latents: torch.Tensor) -> torch.Tensor:
    """First three channels as RGB, or the first channel as grey: [Ch, F, H, W] -> [3, F, H, W]."""
    return latents[:3] if latents.shape[0] >= 3 else latents[:1].expand(3, *latents.shape[1:])


class IdentityCodec(FrameCount):
    """Pixel-space models: a latent frame is a video frame; `scale` maps latents onto [-1, 1]."""

    def __init__(self, channels: int, scale: float = 1.0):
        super().__init__(None)
        self.channels = channels
        self.scale = scale

    def decoder(self) -> IdentityCodec:
        return self

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8(as_rgb(latents.float()) * self.scale)  # [f, H, W, 3]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        rgb = from_uint8(frames) / self.scale  # [3, F, H, W]
        if self.channels == 3:
            return rgb
        return rgb.mean(0, keepdim=True).expand(self.channels, *rgb.shape[1:]).clone()


class WanVaeCodec(FrameCount):
    """AutoencoderKLWan with normalised latents: 1 latent frame -> 1 frame, then 1 -> `temporal` frames."""

    def __init__(self, vae):
        super().__init__(vae.config.scale_factor_temporal)
        self.vae = vae.eval()
        z_dim = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean).view(z_dim, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(z_dim, 1, 1, 1)

    def decoder(self) -> StreamingWanDecoder:
        return StreamingWanDecoder(self)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        rgb = from_uint8(frames)[None].to(self.vae.dtype)  # [1, 3, F, H, W]
        z = self.vae.encode(rgb).latent_dist.mode()[0].float()  # [Ch, F', h, w]
        return (z - self.mean) / self.std


REPLICATE = "Rep"  # the Wan decoder's cache marker for "repeat the first frame"


class StreamingWanDecoder:
    """Decodes latent frames one at a time, keeping the causal decoder's feature cache across chunks,
    so decoding chunk by chunk equals decoding the whole video at once."""

    def __init__(self, codec: WanVaeCodec):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.codec = codec
        causal_convs = sum(isinstance(m, WanCausalConv3d) for m in codec.vae.decoder.modules())
        self.cache = [None] * causal_convs  # one cached feature slot per causal convolution
        self.first = True

    def state(self) -> dict[str, torch.Tensor]:
        """The causal cache as named tensors, so a resumed run decodes exactly as an uninterrupted one."""
        state = {"first": torch.tensor([int(self.first)])}
        for i, entry in enumerate(self.cache):
            if isinstance(entry, torch.Tensor):
                state[f"cache/{i}"] = entry
            elif entry == REPLICATE:
                state[f"replicate/{i}"] = torch.empty(0)
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.first = bool(state["first"].item())
        self.cache = [None] * len(self.cache)
        for name, tensor in state.items():
            kind, _, index = name.partition("/")
            if kind == "cache":
                self.cache[int(index)] = tensor.to(self.codec.vae.dtype)
            elif kind == "replicate":
                self.cache[int(index)] = REPLICATE

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.codec.vae
        z = (latents.float() * self.codec.std + self.codec.mean)[None].to(vae.dtype)  # [1, Ch, C, h, w]
        x = vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            out = vae.decoder(
                x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=[0], first_chunk=self.first
            )  # [1, 3, f, H, W]
            self.first = False
            frames.append(out)
        video = torch.cat(frames, dim=2)[0].float()  # [3, f, H, W]
        return to_uint8(video)
