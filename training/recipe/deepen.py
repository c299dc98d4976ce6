"""Deepens a trained transformer with identity blocks, so fine-tuning starts from exactly what it already does;
and checks which shape changes fine-tuning allows."""

from __future__ import annotations

import torch

from orchestrator.core.errors import UserError
from training.recipe.config import ArchitectureConfig

# The output layers of a block's three residual branches; zeroed, the block adds nothing to its input.
RESIDUAL_OUTPUTS = ("attn1.to_out.0", "attn2.to_out.0", "ffn.net.2")


def check_architecture(loaded: dict, arch: ArchitectureConfig) -> int:
    """A fine-tuned model keeps its patch size; it may grow deeper, and wider by one whole factor of its heads
    and FFN channels, or regroup its heads into fewer of a multiple of their size at the same width. Returns the
    widening factor; fails naming the first field that does not fit."""
    patch, head_dim = tuple(loaded["patch_size"])[1], loaded["attention_head_dim"]
    if arch.patch != patch:
        raise UserError(f"init_from has architecture.patch={patch} but the config asks for {arch.patch}")
    heads, ffn = loaded["num_attention_heads"], loaded["ffn_dim"]
    if arch.head_dim != head_dim:
        if arch.head_dim % head_dim or arch.heads * arch.head_dim != heads * head_dim or arch.ffn_dim != ffn:
            raise UserError(f"init_from has {heads} heads of {head_dim} channels and ffn_dim={ffn}; another "
                            f"head_dim must be a multiple of {head_dim} with heads * head_dim = {heads * head_dim} "
                            f"and the same ffn_dim (got {arch.heads} heads of {arch.head_dim}, ffn_dim="
                            f"{arch.ffn_dim})")
        heads = arch.heads
    factor = arch.heads // heads
    if arch.heads % heads or factor < 1 or arch.ffn_dim != ffn * factor:
        raise UserError(f"init_from has {heads} heads and ffn_dim={ffn}; architecture.heads and ffn_dim must be "
                        f"the same whole multiple of those (got {arch.heads} and {arch.ffn_dim})")
    if arch.layers < loaded["num_layers"]:
        raise UserError(f"init_from has {loaded['num_layers']} layers; architecture.layers={arch.layers} "
                        "would drop some (a model can only be deepened)")
    return factor


def new_block_positions(old: int, new: int) -> list[int]:
    """Indices, in the deepened stack of `new` blocks, of the inserted ones, spread evenly between the old."""
    added = new - old
    return [(i + 1) * new // added - 1 for i in range(added)]


def deepen(model, layers: int):
    """A copy of a SkyReelsV2Transformer3DModel with `layers` blocks: the old ones in order, identity blocks
    (residual outputs zeroed) spread between them. Its output equals the original's for every input."""
    if layers == model.config.num_layers:
        return model
    deeper = type(model).from_config({**model.config, "num_layers": layers})
    inserted = new_block_positions(model.config.num_layers, layers)
    kept = [i for i in range(layers) if i not in inserted]  # where old block b goes: kept[b]
    state = deeper.state_dict()  # inserted blocks keep their fresh initialisation ...
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            _, old, rest = key.split(".", 2)
            key = f"blocks.{kept[int(old)]}.{rest}"
        state[key] = value
    for index in inserted:  # ... except their residual outputs
        for name in RESIDUAL_OUTPUTS:
            for key in (f"blocks.{index}.{name}.weight", f"blocks.{index}.{name}.bias"):
                state[key] = torch.zeros_like(state[key])
    deeper.load_state_dict(state)
    return deeper
