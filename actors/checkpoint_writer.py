"""A Ray task that gathers the stages' published chunks and the sink's state into one checkpoint file."""

from __future__ import annotations

import time

import ray
import torch

from orchestrator.checkpoint import CheckpointStore
from orchestrator.run_state import make_checkpoint
from orchestrator.video_sink import SinkState


@ray.remote(num_cpus=0)
def save_checkpoint(
    uri: str, keep: int, next_tick: int, meta: dict, sink: SinkState, *published: dict[int, torch.Tensor]
) -> tuple[int, float]:
    """Write the window after a shift boundary; returns (frames covered, seconds spent writing)."""
    started = time.perf_counter()
    window = {m: x for chunks in published for m, x in chunks.items()}
    CheckpointStore(uri, keep).write(make_checkpoint(next_tick, window, sink, meta))
    return sink.frames, time.perf_counter() - started
