"""Regroups a trained transformer's attention heads into fewer, larger ones of the same width, so that fine-tuning
can give it a finer rotary position code while starting from everything else it has learnt."""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0  # the rotary code's base in SkyReelsV2RotaryPosEmbed
ROTATED = ("to_q.weight", "to_q.bias", "to_k.weight", "to_k.bias", "norm_q.weight", "norm_k.weight")


def rope_pairs(head_dim: int) -> list[tuple[int, float]]:
    """(axis, frequency) of every channel pair of a head in channel order: time (axis 0), then height and width,
    each from its highest frequency down, as the transformer's rotary code lays them out."""
    spatial = 2 * (head_dim // 6)
    dims = (head_dim - 2 * spatial, spatial, spatial)
    return [(axis, ROPE_THETA ** (-2 * i / dim)) for axis, dim in enumerate(dims) for i in range(dim // 2)]


def group_order(old_dim: int, new_dim: int) -> list[int]:
    """For each channel of a new head, the channel of the merged old heads (heads side by side) it takes. Each
    axis's new pairs take that axis's old pairs, highest frequency first; pairs left over fill the slots left
    over, again by frequency. Queries and keys reordered alike keep their products; only the rotation differs."""
    old = [(axis, freq, head * old_dim + 2 * i) for head in range(new_dim // old_dim)
           for i, (axis, freq) in enumerate(rope_pairs(old_dim))]
    old.sort(key=lambda pair: -pair[1])  # stable: at equal frequency, the first head first
    slots = rope_pairs(new_dim)
    source: list[int | None] = [None] * len(slots)
    for slot, (axis, _) in enumerate(slots):
        match = next((pair for pair in old if pair[0] == axis), None)
        if match is not None:
            source[slot] = match[2]
            old.remove(match)
    free = sorted((slot for slot, taken in enumerate(source) if taken is None), key=lambda slot: -slots[slot][1])
    for slot, pair in zip(free, old, strict=True):
        source[slot] = pair[2]
    return [channel + offset for channel in source for offset in (0, 1)]


def regroup(model, head_dim: int):
    """A copy of a SkyReelsV2Transformer3DModel with heads of `head_dim` channels (a whole multiple of its own)
    and the same width: consecutive heads merge, their self-attention queries and keys reordered by group_order.
    Not the same function (merged heads share one softmax, the rotations change), but a warm start."""
    config = model.config
    old_dim = config.attention_head_dim
    if head_dim == old_dim:
        return model
    width = old_dim * config.num_attention_heads
    if head_dim % old_dim or width % head_dim:
        raise ValueError(f"heads of {old_dim} channels merge into a whole multiple of {old_dim} that divides "
                         f"the width {width}, not {head_dim}")
    order = torch.tensor([group * head_dim + channel for group in range(width // head_dim)
                          for channel in group_order(old_dim, head_dim)])  # [width]
    regrouped = type(model).from_config({**config, "num_attention_heads": width // head_dim,
                                         "attention_head_dim": head_dim})
    state = {name: value[order] if ".attn1." in name and name.endswith(ROTATED) else value
             for name, value in model.state_dict().items()}
    regrouped.load_state_dict(state)
    return regrouped
