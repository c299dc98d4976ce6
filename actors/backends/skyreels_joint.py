"""Joint SkyReels-V2 calls: each stage runs the transformer on its own share of the window's tokens; self-attention
gathers the keys and values of the whole window from the stages (context parallelism by an all-gather of K and V).

A share is a run of strips, not of frames: a strip is the latents of one row of patches (p_h latent rows of one
frame, with the p_t frames of its temporal patch), so shares differ by at most one row of tokens whatever the
window's frame count (15 frames in 2 stages: 60 strips each instead of 8 and 7 frames). The model takes a share as
a video whose frames are its strips: patch embedding, per-frame levels and the output projection act on each patch
alone, so this gives every token exactly what the window's call gives it.

Everything but self-attention acts on one token at a time (patch embedding, per-frame timestep modulation, norms,
feed-forward, cross-attention to the text, the output projection), so it runs unchanged on a stage's own tokens;
two pieces of the diffusers model are swapped in while a joint call runs: the rotary embedding, which must give
a stage's tokens their positions in the whole window, and the self-attention processor, whose queries are the
stage's tokens and whose keys and values are the window's. This is our own small processor rather than diffusers'
context parallelism (`enable_parallelism`), which in 0.42.1 splits one full input evenly over the ranks (here each
stage holds only its band, bands are uneven and may be empty during fill and drain), needs the head count
divisible by the ranks (Ulysses), divides by the accelerator count (zero on CPU-only torch), and sends SkyReels'
cross-attention through the parallel path too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from actors.backends.collective import StageGroup, even_split
from orchestrator.core.errors import UserError


@dataclass
class WindowShare:
    """The joint call in progress: the group, and this stage's tokens within the window's."""

    group: StageGroup
    tokens: list[int]  # tokens of each stage's share, stage 0 first
    offset: int  # this stage's first token in the window
    shape: tuple[int, int, int]  # the window's latent frames, height and width


@dataclass(frozen=True)
class Strips:
    """The strip layout of a model's windows: x [B, Ch, F, h, w] as x [B, Ch, S, p_h, w], S = F * h / p_h strips
    in token order (frame patch, patch row, then the p_t frames of the temporal patch)."""

    patch: tuple[int, int, int]  # the model's p_t, p_h, p_w

    def count(self, frames: int, height: int) -> int:
        """Strips of `frames` latent frames of this height."""
        return frames * (height // self.patch[1])

    def frames(self, strips: int, height: int) -> int:
        """Latent frames of `strips` strips of frames of this height (count undone)."""
        return strips // (height // self.patch[1])

    def cut(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, Ch, F, h, w], sigma [B, F] -> x [B, Ch, S, p_h, w] and each strip's level [B, S]."""
        p_t, p_h, _ = self.patch
        b, ch, f, h, w = x.shape
        parts = x.reshape(b, ch, f // p_t, p_t, h // p_h, p_h, w)  # [B, Ch, F', p_t, h', p_h, w]
        strips = parts.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, ch, -1, p_h, w)  # [B, Ch, F'*h'*p_t, p_h, w]
        levels = sigma.unflatten(1, (f // p_t, 1, p_t)).expand(-1, -1, h // p_h, -1)  # [B, F', h', p_t]
        return strips, levels.flatten(1)

    def join(self, strips: torch.Tensor, height: int) -> torch.Tensor:
        """cut undone for x: [B, Ch, S, p_h, w] -> [B, Ch, F, h, w] with h = height."""
        p_t, p_h, _ = self.patch
        b, ch, s, _, w = strips.shape
        frames = self.frames(s, height)  # F (the shape is spelt out: a share may be empty)
        parts = strips.reshape(b, ch, frames // p_t, height // p_h, p_t, p_h, w)  # [B, Ch, F', h', p_t, p_h, w]
        return parts.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, ch, frames, height, w)


class WindowRope(nn.Module):
    """The model's rotary embedding, cut to this stage's tokens of the window during a joint call."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.rope = rope
        self.share: WindowShare | None = None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.share is None:
            return self.rope(hidden_states)
        whole = torch.empty(*hidden_states.shape[:2], *self.share.shape, device="meta")  # only its shape is read
        cos, sin = self.rope(whole)  # [1, T, 1, D] each, the whole window
        mine = slice(self.share.offset, self.share.offset + self.share.tokens[self.share.group.rank])
        return cos[:, mine], sin[:, mine]


def turns(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's cos, sin [1, n, 1, d] (each angle given for both of its pair) as e^(i angle), one per
    pair: [1, n, 1, d/2] complex, float32."""
    return torch.complex(cos[..., 0::2].float(), sin[..., 0::2].float())


def rotate(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, n, H, d] by turn [1, n, 1, d/2] (see turns): each pair of x taken as one complex
    number and multiplied by its turn, in float32 (a tenth of the time of rotating the halves separately and
    interleaving them again)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, n, H, d/2]
    return torch.view_as_real(pairs * turn).flatten(-2).type_as(x)  # [B, n, H, d]


class JointSelfAttention:
    """attn1's processor: outside a joint call the model's own; inside one, queries of this stage's tokens attend
    to the keys and values of every token of the window, gathered from the stages."""

    def __init__(self, plain, rope: WindowRope):
        self.plain, self.rope = plain, rope

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None) -> torch.Tensor:
        share = self.rope.share
        if share is None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # [B, n, H, d]
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))  # [B, n, H, d]
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))  # [B, n, H, d]
        turn = turns(*rotary_emb)  # [1, n, 1, d/2]
        query, key = rotate(query, turn), rotate(key, turn)
        key, value = gather_keys_values(share, key, value)  # [B, T, H, d] each
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)))  # [B, H, n, d]
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)  # [B, n, H*d]
        return attn.to_out[1](attn.to_out[0](out))


def gather_keys_values(share: WindowShare, key: torch.Tensor, value: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's keys and values [B, T, H, d] from this stage's [B, n, H, d]: one all-gather for both."""
    both = share.group.gather(torch.stack([key, value]), share.tokens, dim=2)  # [2, B, T, H, d]
    return both[0], both[1]


class JointCalls:
    """Installs WindowRope and JointSelfAttention in a SkyReels-V2 transformer; `window` runs a joint call."""

    def __init__(self, transformer):
        if transformer.config.num_frame_per_block > 1:
            raise UserError("pipeline.parallel=context needs a model with full attention (num_frame_per_block = 1); "
                            "use pipeline.parallel=halo")
        self.transformer = transformer
        self.strips = Strips(tuple(transformer.config.patch_size))
        self.rope = WindowRope(transformer.rope)
        transformer.rope = self.rope
        for block in transformer.blocks:
            block.attn1.set_processor(JointSelfAttention(block.attn1.processor, self.rope))

    def even_strips(self, strips: list[int], world: int) -> list[int]:
        """The window of `strips` (strips per stage) re-cut into `world` near-equal shares of whole patches, stage 0
        first."""
        return even_split(sum(strips), world, self.strips.patch[0])

    def held_strips(self, frames: tuple[int, ...], height: int) -> list[int]:
        """Strips per stage of a window split as `frames` (latent frames per stage) of this latent height."""
        p_t = self.strips.patch[0]
        if any(f % p_t for f in frames):
            raise UserError(f"pipeline.parallel=context needs schedule.chunk to be a multiple of the model's "
                            f"temporal patch {p_t}")
        return [self.strips.count(f, height) for f in frames]

    @contextlib.contextmanager
    def window(self, group: StageGroup, strips: list[int], height: int, width: int) -> Iterator[WindowShare]:
        """While open, the model computes this stage's share of a window split as `strips` (strips per stage, stage
        0 first) of height x width latents; the model's input is the share in the strip layout."""
        p_t, _, p_w = self.strips.patch
        tokens = [s // p_t * (width // p_w) for s in strips]
        frames = self.strips.frames(sum(strips), height)
        self.rope.share = WindowShare(group, tokens, group.offset(tokens), (frames, height, width))
        try:
            yield self.rope.share
        finally:
            self.rope.share = None

    def take_part(self, share: WindowShare, rows: int) -> None:
        """A joint call to which this stage brings no tokens: it still joins every layer's gather."""
        attn = self.transformer.blocks[0].attn1
        nothing = torch.empty(2, rows, 0, attn.heads, attn.inner_dim // attn.heads,
                              dtype=self.transformer.dtype, device=self.transformer.device)  # [2, B, 0, H, d]
        for _ in self.transformer.blocks:
            share.group.gather(nothing, share.tokens, dim=2)
