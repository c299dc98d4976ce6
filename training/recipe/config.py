"""Training configuration: one dataclass per section, loaded from YAML plus `a.b=c` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.config import ScheduleConfig, merge_layers
from orchestrator.core.errors import UserError
from orchestrator.state.settings import read_yaml
from training.world.scenes import COLOURS


@dataclass
class ArchitectureConfig:
    """The SkyReels-V2 transformer to train; a fine-tuned one (init_from) must have its patch size but may be
    shallower (it is deepened with identity blocks), narrower by one whole factor of heads and FFN channels (it
    is widened by copying them), or of the same width in more, smaller heads (merged into the fewer, larger
    heads asked for: regroup.py)."""

    patch: int = 4
    """Spatial patch size; 32x32 frames with patch 4 give 64 tokens per frame."""
    heads: int = 4
    """Attention heads."""
    head_dim: int = 16
    """Channels per head; the width is heads * head_dim. The model's 3-D rotary position code gives each spatial
    axis 2 * (head_dim // 6) of them: 16 leaves 4, two frequencies of which only one varies across an 8-token
    frame, and it wraps within 7 tokens; 32 leaves 10, five frequencies that place every token of the frame (the
    shipped model's heads, merged from 16-channel ones: models/tiny/README.md, run 6)."""
    layers: int = 4
    """Transformer blocks."""
    ffn_dim: int = 256
    """Hidden size of the feed-forward layers."""


@dataclass
class DataConfig:
    """Clips drawn from the procedural world."""

    size: int = 32
    """Frame height and width in pixels."""
    fps: float = 8.0
    """Frames per second of the world."""
    max_objects: int = 2
    """Objects per scene (1..max_objects)."""
    fill_drain_fraction: float = 0.25
    """Share of samples that show a filling or draining window (fewer noisy chunks, maybe no context)."""
    text_dropout: float = 0.1
    """Share of samples trained without text, so classifier-free guidance works."""
    stills_every: int = 0
    """1 = a stills phase: the steps train on stills instead of video windows, short clips of `stills_batch`
    independent scenes, each at its own level (training/recipe/stills.py); 0 = no stills. For the tiny model a
    step of 64 stills takes about half the time of one of 8 windows of 15 frames and shows 8 times the scenes:
    what a shape looks like for its caption is learnt from many scenes, not many frames of one, but a phase of
    stills alone does not teach how a video goes on (see windows_every)."""
    windows_every: int = 0
    """In a stills phase, every this-many-th step (the last of each group) trains on video windows after all, so
    that the model keeps continuing a video; 0 = never."""
    stills_batch: int = 64
    """Scenes of a still step."""
    stills_frames: int = 1
    """Consecutive frames of each still's scene, all at its one level with no context: 1 = a single frame; a
    chunk's worth (schedule.chunk) shows the shapes as the first chunk of a video is drawn, several frames at
    once, which single frames teach only in part (models/tiny/README.md, runs 10 and 11)."""
    stills_max_objects: int = 0
    """Objects per still's scene (1..this); 0 = max_objects. One-object stills bind each shape word to its outline
    (models/tiny/README.md, runs 8 to 10) while the windows show scenes of several."""
    stills_shift: float = 1.5
    """Time shift of the stills' levels (u uniform): 1.5, the tiny model's sampling shift, puts more of them at
    the middle levels, where an object's outline is drawn, than the windows' 3."""


@dataclass
class OptimConfig:
    """AdamW with warm-up and cosine decay; EMA of the weights is what gets saved."""

    steps: int = 3000
    """Optimiser steps."""
    batch: int = 8
    """Clips per step."""
    lr: float = 5e-4
    """Peak learning rate."""
    warmup: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    ema_decay: float = 0.995
    """EMA decay of the saved weights."""
    threads: int = 0
    """Torch threads; 0 = all cores."""


@dataclass
class TrainConfig:
    """A training run: data, model, the progressive recipe's window, optimiser and outputs."""

    out: str = "trained/tiny"
    """Folder the model is saved to with save_pretrained (transformer/ inside)."""
    init_from: str = ""
    """Fine-tune a diffusers model folder (its transformer/) instead of training from scratch."""
    seed: int = 0
    """Seed of data, initialisation and noise."""
    save_every: int = 500
    """Save the EMA model and a resumable training state every this many steps."""
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(chunk=3, noisy_chunks=4, steps=12))
    """The window the model is trained for (the same keys as generation)."""
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def load_train_config(files: list[str] = (), overrides: list[str] = ()) -> TrainConfig:
    """TrainConfig defaults merged with YAML files and `a.b=c` overrides; checked."""
    config: TrainConfig = merge_layers(TrainConfig, [read_yaml(Path(f)) for f in files], overrides)
    sched = config.schedule
    if sched.steps % sched.noisy_chunks:
        raise UserError(f"schedule.steps ({sched.steps}) must be a multiple of schedule.noisy_chunks")
    if config.optim.steps < 1 or config.optim.batch < 1:
        raise UserError("optim.steps and optim.batch must be >= 1")
    if sched.context_level:
        raise UserError("schedule.context_level is a sampling setting; training shows the context clean")
    if sched.stochasticity:
        raise UserError("schedule.stochasticity is a sampling setting; training does not take steps")
    data = config.data
    if data.stills_every not in (0, 1):
        raise UserError(f"data.stills_every must be 0 (no stills) or 1 (a stills phase), got {data.stills_every}")
    if data.windows_every < 0 or (data.windows_every and not data.stills_every):
        raise UserError(f"data.windows_every must be 0 or, with data.stills_every=1, 1 or more, "
                        f"got {data.windows_every} with data.stills_every={data.stills_every}")
    for key, least in {"max_objects": 1, "stills_max_objects": 0}.items():
        if not least <= getattr(data, key) <= len(COLOURS):
            raise UserError(f"data.{key} must be in {least}..{len(COLOURS)} (the world's colours), "
                            f"got {getattr(data, key)}")
    if data.stills_batch < 1 or data.stills_frames < 1 or data.stills_shift <= 0:
        raise UserError(f"data.stills_batch and data.stills_frames must be >= 1 and data.stills_shift > 0, "
                        f"got {data.stills_batch}, {data.stills_frames} and {data.stills_shift}")
    return config
