"""Deepens a trained transformer with identity blocks, so fine-tuning starts from exactly what it already does."""

from __future__ import annotations

import torch

from orchestrator.errors import UserError
from training.config import ArchitectureConfig

# The output layers of a block's three residual branches; zeroed, the block adds nothing to its input.
RESIDUAL_OUTPUTS = ("attn1.to_out.0", "attn2.to_out.0", "ffn.net.2")


def check_architecture(loaded: dict, arch: ArchitectureConfig) -> None:
    """A fine-tuned model keeps its shape; only its depth may grow. Fails naming the first field that differs."""
    fields = {"patch": tuple(loaded["patch_size"])[1], "heads": loaded["num_attention_heads"],
              "head_dim": loaded["attention_head_dim"], "ffn_dim": loaded["ffn_dim"]}
    for name, value in fields.items():
        if getattr(arch, name) != value:
            raise UserError(f"init_from has architecture.{name}={value} but the config asks for "
                            f"{getattr(arch, name)}; only architecture.layers may differ (to deepen the model)")
    if arch.layers < loaded["num_layers"]:
        raise UserError(f"init_from has {loaded['num_layers']} layers; architecture.layers={arch.layers} "
                        "would drop some (a model can only be deepened)")


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
