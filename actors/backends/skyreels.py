"""SkyReels-V2 diffusion-forcing transformer (diffusers) behind the velocity contract, one timestep per frame."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.backends.collective import StageGroup, frame_rows, from_frame_rows
from actors.backends.skyreels_joint import JointCalls
from actors.backends.text import TextEncoder, load_text_encoder
from actors.codecs import IdentityCodec, WanVaeCodec
from orchestrator.core.config import ModelConfig
from orchestrator.core.errors import UserError
from orchestrator.core.frames import FrameCount

TRAIN_TIMESTEPS = 1000  # SkyReels / Wan flow-matching models take t = 1000 * sigma


@dataclass
class TextCond:
    """Prompt embeddings for one stream: positive [1, L, D] and, with guidance, negative [1, L, D]."""

    positive: torch.Tensor
    negative: torch.Tensor | None


def _has_component(path: str, name: str) -> bool:
    """Local folders are inspected; hub ids are assumed to carry the full SkyReels-V2 layout."""
    folder = Path(path)
    return (folder / name).is_dir() if folder.is_dir() else True


def _component_config(path: str, name: str, diffusers_class: str) -> dict:
    """The config of a component (transformer/, vae/): read straight from a local folder, since importing the
    diffusers class only to read it costs seconds (the autoencoders' modules); from the hub through that class."""
    folder = Path(path) / name
    if folder.is_dir():
        return json.loads((folder / "config.json").read_text())
    import diffusers

    return getattr(diffusers, diffusers_class).load_config(path, subfolder=name)


def skyreels_codec(cfg: ModelConfig) -> IdentityCodec | WanVaeCodec:
    """The folder's AutoencoderKLWan, or the identity for a pixel-space model (no vae/ folder)."""
    if _has_component(cfg.path, "vae"):
        from diffusers import AutoencoderKLWan

        return WanVaeCodec(AutoencoderKLWan.from_pretrained(cfg.path, subfolder="vae").to(cfg.device))
    return IdentityCodec(_component_config(cfg.path, "transformer", "SkyReelsV2Transformer3DModel")["in_channels"])


def skyreels_frame_count(cfg: ModelConfig) -> FrameCount:
    """The codec's frame arithmetic from the VAE config alone, without loading weights."""
    if _has_component(cfg.path, "vae"):
        return FrameCount(_component_config(cfg.path, "vae", "AutoencoderKLWan")["scale_factor_temporal"])
    return FrameCount()


class SkyReelsBackend:
    """Velocity from SkyReelsV2Transformer3DModel with enable_diffusion_forcing=True and CFG."""

    def __init__(self, cfg: ModelConfig):
        from diffusers import SkyReelsV2Transformer3DModel

        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.guidance = cfg.guidance_scale
        self.negative_prompt = cfg.negative_prompt
        self.joint: JointCalls | None = None  # installed by the first joint call
        try:
            self.transformer = SkyReelsV2Transformer3DModel.from_pretrained(
                cfg.path, subfolder="transformer", torch_dtype=self.dtype
            ).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load a SkyReels-V2 transformer from '{cfg.path}': {err}") from None
        self.codec = skyreels_codec(cfg)
        spatial = self.codec.vae.config.scale_factor_spatial if isinstance(self.codec, WanVaeCodec) else 1
        self.latent_shape = self._latent_shape(cfg, spatial)
        self.text: TextEncoder = load_text_encoder(cfg, self.device)
        text_dim = self.transformer.config.text_dim
        if self.text.dim != text_dim:
            raise UserError(
                f"text encoder '{self.text.name}' gives {self.text.dim}-dim embeddings "
                f"but the transformer expects text_dim={text_dim}"
            )

    def _latent_shape(self, cfg: ModelConfig, spatial: int) -> tuple[int, int, int]:
        _, patch_h, patch_w = self.transformer.config.patch_size
        if cfg.height % (spatial * patch_h) or cfg.width % (spatial * patch_w):
            raise UserError(
                f"model.height and model.width must be multiples of {spatial * patch_h} and "
                f"{spatial * patch_w} for this model, got {cfg.height}x{cfg.width}"
            )
        return (self.transformer.config.in_channels, cfg.height // spatial, cfg.width // spatial)

    def encode_prompt(self, text: str) -> TextCond:
        positive = self.text.encode(text).to(self.dtype)  # [1, L, D]
        negative = self.text.encode(self.negative_prompt).to(self.dtype) if self.guidance != 1 else None
        return TextCond(positive, negative)

    def blend_conds(self, before: TextCond, after: TextCond, weight: float) -> TextCond:
        """The prompt embeddings interpolated linearly, token by token (both padded to one length); the negative
        prompt is the same for both."""
        return TextCond(torch.lerp(before.positive, after.positive, weight), before.negative)  # [1, L, D]

    def join_conds(self, conds: list[TextCond]) -> TextCond:
        """One TextCond for a batch of streams: embeddings stacked along B (all padded to the same length)."""
        negatives = [c.negative for c in conds]
        return TextCond(torch.cat([c.positive for c in conds]),  # [B, L, D]
                        None if negatives[0] is None else torch.cat(negatives))  # [B, L, D]

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: TextCond) -> torch.Tensor:
        """x [B, Ch, F, h, w], sigma [B, F] -> v [B, Ch, F, h, w]; cond holds B streams' embeddings."""
        hidden = x.to(self.device, self.dtype)
        timestep = (sigma * TRAIN_TIMESTEPS).to(self.device, torch.float32)  # [B, F]
        text = cond.positive
        if cond.negative is not None:  # one batched call for both branches
            hidden, timestep = hidden.repeat(2, 1, 1, 1, 1), timestep.repeat(2, 1)
            text = torch.cat([cond.positive, cond.negative])  # [2B, L, D]
        out = self.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=text,
            enable_diffusion_forcing=True,
            return_dict=False,
        )[0].float()  # [B or 2B, Ch, F, h, w]
        if cond.negative is not None:
            out = self.guided(*out.chunk(2))
        return out.to(x.device)

    def guided(self, conditional: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance: the two branches' velocities [B, ...] made into one."""
        return unconditional + self.guidance * (conditional - unconditional)

    def shared_velocity(self, group: StageGroup, x: torch.Tensor, sigma: torch.Tensor, cond: TextCond,
                        frames: tuple[int, ...]) -> torch.Tensor:
        """A joint call: v of this stage's frames x [B, Ch, F_j, h, w] (sigma [B, F_j]) with self-attention over
        the whole window, split among the stages as `frames` (actors/backends/skyreels_joint.py).

        The bands are uneven (the oldest also carries the context; fill and drain leave some empty) and the stages
        of a joint call wait for each other in every layer, so the window is re-cut evenly for the call, in strips
        (rows of patches): each stage computes an equal share of the window's tokens, and the latents and
        velocities that cross a share's edge travel in one all-to-all each way (latents with their levels; they are
        small beside the activations). A window too small for every stage to compute at least as much as the
        smallest band holds (fill and drain) keeps its bands: the exchange would cost more than it saves, and CPU
        attention rounds very short query blocks differently.

        Two stages with guidance split the call by branch instead (_branch_velocity): no collective inside the model
        at all."""
        if cond.negative is not None and group.world == 2:
            return self._branch_velocity(group, x, sigma, cond, frames)
        if self.joint is None:
            self.joint = JointCalls(self.transformer)
        height, width = x.shape[3:]
        held = self.joint.held_strips(frames, height)
        even = self.joint.even_strips(held, group.world)
        strips, levels = self.joint.strips.cut(x, sigma)  # [B, Ch, held[j], p_h, w], [B, held[j]]
        if even == held or min(even) < min(s for s in held if s):
            v = self._joint_velocity(group, strips, levels, cond, held, height, width)
        else:
            rows = group.redistribute(frame_rows(strips, levels), held, even, dim=0)  # [even[j], B*Ch*p_h*w + B]
            strips_even, levels_even = from_frame_rows(rows, strips, levels)  # [B, Ch, even[j], p_h, w], [B, even[j]]
            v_even = self._joint_velocity(group, strips_even, levels_even, cond, even, height, width)
            v = group.redistribute(v_even, even, held, dim=2)  # [B, Ch, held[j], p_h, w]
        return self.joint.strips.join(v, height)  # [B, Ch, F_j, h, w]

    def _branch_velocity(self, group: StageGroup, x: torch.Tensor, sigma: torch.Tensor, cond: TextCond,
                         frames: tuple[int, ...]) -> torch.Tensor:
        """A joint call of two stages with guidance: stage 0 computes the conditional branch of the whole window,
        stage 1 the unconditional one, from the window's latents gathered first (they are small); the branches'
        velocities are exchanged and each stage keeps the guided velocity of its own frames. Each stage does half
        the work, as with a split of the tokens, but the stages meet twice per call instead of in every layer, and
        one branch alone gives the same bits as the two batched (the shipped model on CPU)."""
        window, levels, mine = group.gather_window(x, sigma, list(frames))  # [B, Ch, F, h, w], [B, F]
        text = cond.positive if group.rank == 0 else cond.negative
        branch = self.velocity(window, levels, TextCond(text, None))  # [B, Ch, F, h, w]
        both = group.gather(branch, [len(branch)] * 2, dim=0)  # [2B, Ch, F, h, w]: stage 1's first, window order
        unconditional, conditional = both.chunk(2)
        return self.guided(conditional, unconditional)[:, :, mine]  # [B, Ch, F_j, h, w]

    def _joint_velocity(self, group: StageGroup, strips: torch.Tensor, levels: torch.Tensor, cond: TextCond,
                        shares: list[int], height: int, width: int) -> torch.Tensor:
        """v of this stage's share [B, Ch, shares[j], p_h, w] (strip layout, levels [B, shares[j]]) of a window of
        height x width latents split as `shares` strips per stage, computed together."""
        with self.joint.window(group, shares, height, width) as share:
            if strips.shape[2]:
                return self.velocity(strips, levels, cond)
            self.joint.take_part(share, len(strips) * (1 if cond.negative is None else 2))
            return torch.empty_like(strips)
