"""Where a video starts: from nothing or a clip, or from a checkpoint; and how a shift boundary becomes one."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from orchestrator.core.config import CheckpointConfig, Config, identity_hash, to_yaml, video_identity
from orchestrator.core.errors import UserError
from orchestrator.core.prompts import ChunkPrompts, PromptSchedule
from orchestrator.core.sampler import Window
from orchestrator.state.checkpoint import Checkpoint, CheckpointStore


@dataclass
class SinkState:
    """Where the output stands at a checkpoint: everything before is in closed segments."""

    frames: int = 0
    latent_frames: int = 0
    next_chunk: int = 0
    decoder: dict[str, torch.Tensor] = field(default_factory=dict)


class DurableOutput(Protocol):
    """A video being written that can make everything written so far durable (the sink's VideoSink)."""

    def checkpoint(self) -> SinkState: ...


@dataclass
class StartState:
    """The window and output position a run (re)starts from."""

    next_tick: int = 0
    window: Window = field(default_factory=Window)  # chunks and their solver history
    init_count: int = 0  # chunks of the initial clip (ids -init_count..-1)
    sink: SinkState = field(default_factory=SinkState)
    resumed: bool = False


def fresh_start(init_chunks: list[torch.Tensor]) -> StartState:
    """The chunks of an initial clip (ids -len..-1; clean context, no history), or nothing."""
    return StartState(0, Window({i - len(init_chunks): x for i, x in enumerate(init_chunks)}), len(init_chunks))


def checkpoint_meta(config: Config, init_count: int) -> dict:
    """The facts every checkpoint of a run carries besides tensors."""
    return {
        "run_id": config.run.id, "config_hash": identity_hash(config), "identity": video_identity(config),
        "seed": config.seed, "prompts": list(config.prompts), "init_count": init_count, "config": to_yaml(config),
    }


def make_checkpoint(next_tick: int, window: Window, sink: SinkState, meta: dict) -> Checkpoint:
    """The window's chunks as 'chunk/m', their solver history as 'history/m' and the sink's decoder cache."""
    tensors = {f"chunk/{m}": x for m, x in window.chunks.items()}
    tensors |= {f"history/{m}": x for m, x in window.history.items()}
    tensors |= {f"decoder/{name}": x for name, x in sink.decoder.items()}
    meta = {**meta, "latent_frames": sink.latent_frames, "next_chunk": sink.next_chunk}
    return Checkpoint(next_tick, sink.frames, meta, tensors)


def write_checkpoint(video: DurableOutput, store: CheckpointStore, next_tick: int, window: Window, meta: dict) -> int:
    """Close the sink's open segments, then write the window and the sink's state as one checkpoint;
    returns the frames it covers."""
    state = video.checkpoint()
    store.write(make_checkpoint(next_tick, window, state, meta))
    return state.frames


def differing_keys(saved: dict, current: dict) -> list[str]:
    return sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))


STEERED_KEYS = {"prompts", "seconds"}  # what steering a video while it is made changes in its settings


def steered_since(checkpoint: Checkpoint, config: Config, prompts: ChunkPrompts, num_chunks: int) -> bool:
    """Whether the run's settings differ from a checkpoint's only by steering after it: prompts changed from chunks
    that had not entered its window, and a length that still holds every chunk that had."""
    changed = differing_keys(checkpoint.meta.get("identity", {}), video_identity(config))
    if not changed or not set(changed) <= STEERED_KEYS:
        return False
    entered = max((int(name.partition("/")[2]) for name in checkpoint.tensors if name.startswith("chunk/")),
                  default=-1)  # the newest chunk in its window
    saved = dataclasses.replace(prompts, schedule=PromptSchedule.parse(checkpoint.meta["prompts"]))
    return entered < num_chunks and all(saved.of(m) == prompts.of(m) for m in range(entered + 1))


def start_from(checkpoint: Checkpoint, config: Config, prompts: ChunkPrompts | None = None,
               num_chunks: int = 0) -> StartState:
    """Refuse a checkpoint made with different video settings, unless (given the run's chunk prompts and count)
    they differ only by steering after it; else the state to continue from."""
    if checkpoint.meta.get("config_hash") != identity_hash(config) and not (
            prompts is not None and steered_since(checkpoint, config, prompts, num_chunks)):
        keys = differing_keys(checkpoint.meta.get("identity", {}), video_identity(config))
        raise UserError(f"checkpoint was made with different video settings: {', '.join(keys) or 'unknown'}")
    window, decoder = Window(), {}
    for name, tensor in checkpoint.tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "chunk":
            window.chunks[int(rest)] = tensor
        elif kind == "history":
            window.history[int(rest)] = tensor
        elif kind == "decoder":
            decoder[rest] = tensor
    sink = SinkState(checkpoint.frames_written, checkpoint.meta["latent_frames"], checkpoint.meta["next_chunk"],
                     decoder)
    return StartState(checkpoint.next_tick, window, checkpoint.meta["init_count"], sink, resumed=True)


class CheckpointPolicy:
    """Decides at each shift boundary whether a checkpoint is due (by shift count and/or elapsed time)."""

    def __init__(self, cfg: CheckpointConfig):
        self.every_shifts, self.every_seconds = cfg.every_shifts, cfg.every_seconds
        self.shifts = 0
        self.last = time.monotonic()

    def due(self) -> bool:
        self.shifts += 1
        now = time.monotonic()
        if (self.every_shifts and self.shifts >= self.every_shifts) or (
            self.every_seconds and now - self.last >= self.every_seconds
        ):
            self.shifts, self.last = 0, now
            return True
        return False
