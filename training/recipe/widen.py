"""Widens a trained transformer by copying every channel and head, so fine-tuning starts from what it does."""

from __future__ import annotations

import torch

SYMMETRY_NOISE = 1e-2  # relative noise on the copies: identical copies would get identical gradients forever

# Which axes of a parameter live in the model width ("d"), the FFN width ("f"), the six block modulations
# ("6d") or elsewhere (None): (output axis kind, input axis kind) of each 2-D weight, the axis kind of vectors.
_WEIGHTS = {
    "patch_embedding.weight": ("d", None),
    "condition_embedder.time_embedder.linear_1.weight": ("d", None),  # input: sinusoidal features
    "condition_embedder.time_embedder.linear_2.weight": ("d", "d"),
    "condition_embedder.time_proj.weight": ("6d", "d"),
    "condition_embedder.text_embedder.linear_1.weight": ("d", None),  # input: text encoder features
    "condition_embedder.text_embedder.linear_2.weight": ("d", "d"),
    "ffn.net.0.proj.weight": ("f", "d"),
    "ffn.net.2.weight": ("d", "f"),
    "proj_out.weight": (None, "d"),
}
_VECTORS = {"condition_embedder.time_proj.bias": "6d", "ffn.net.0.proj.bias": "f", "proj_out.bias": None}


def _kinds(name: str) -> tuple[str | None, str | None]:
    """(output kind, input kind) of a parameter; block parameters are looked up without their prefix."""
    key = name.split(".", 2)[2] if name.startswith("blocks.") else name
    if key in _WEIGHTS:
        return _WEIGHTS[key]
    if key in _VECTORS:
        return _VECTORS[key], None
    if key.endswith("scale_shift_table"):  # [1, 2 or 6, d]
        return "table", None
    if key.startswith(("attn1.", "attn2.")) and key.endswith(".weight") and "norm" not in key:
        return "d", "d"  # q, k, v and output projections
    return "d", None  # biases and norm weights of width d


def _tile(value: torch.Tensor, axis: int, kind: str | None, factor: int) -> torch.Tensor:
    """Repeat the channels of one axis `factor` times (as [a, b] -> [a, b, a, b], so heads are copied whole)."""
    if kind is None:
        return value
    if kind == "6d":  # six stacked modulation vectors of width d
        parts = value.unflatten(axis, (6, -1))
        return parts.repeat(*[factor if a == axis + 1 else 1 for a in range(parts.dim())]).flatten(axis, axis + 1)
    return value.repeat(*[factor if a == axis else 1 for a in range(value.dim())])


def widen(model, factor: int, generator: torch.Generator, noise: float = SYMMETRY_NOISE):
    """A copy of a SkyReelsV2Transformer3DModel with `factor` times the heads and FFN channels. Every channel is
    copied and the layers reading them take 1/factor of each copy, so the copy computes what the original does
    (normalisations see the same mean and variance) up to the small noise that lets the copies drift apart."""
    if factor == 1:
        return model
    config = model.config
    wider = type(model).from_config({**config, "num_attention_heads": config.num_attention_heads * factor,
                                     "ffn_dim": config.ffn_dim * factor})
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("rope."):
            continue  # per head dimension, unchanged
        out_kind, in_kind = _kinds(name)
        if out_kind == "table":
            grown = _tile(value, value.dim() - 1, "d", factor)
        else:
            grown = _tile(value, 0, out_kind, factor)
            if in_kind is not None:
                grown = _tile(grown, 1, in_kind, factor) / factor
        if grown.dim() > 1 and grown.shape != value.shape:
            grown = grown + noise * grown.std() * torch.randn(grown.shape, generator=generator)
        state[name] = grown
    missing = wider.load_state_dict(state, strict=False).missing_keys
    if any(not key.startswith("rope.") for key in missing):
        raise ValueError(f"widen does not know how to grow {missing}")
    return wider
