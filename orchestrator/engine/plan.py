"""A video's plan (sizes, window, bands, prompts per chunk), where it starts, and its checkpointer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from actors.video_sink import VideoSize
from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.core.frames import FrameCount
from orchestrator.core.partition import Partition
from orchestrator.core.prompts import ChunkPrompts, PromptSchedule
from orchestrator.core.rules import check_length
from orchestrator.core.schedule import Geometry, chunks_for_frames
from orchestrator.state.outputs import read_latents
from orchestrator.state.run_state import CheckpointPolicy, StartState, checkpoint_meta, fresh_start, start_from
from orchestrator.state.runs import RunFolder


@dataclass(frozen=True)
class VideoPlan:
    """Sizes of one video, the window it runs on, and which prompt conditions each chunk."""

    size: VideoSize
    num_chunks: int
    geometry: Geometry
    partition: Partition
    prompts: ChunkPrompts


def plan_video(config: Config, frames_of: FrameCount) -> VideoPlan:
    frames = check_length(config.seconds, config.fps, config.run.max_seconds, "run.max_seconds")
    geometry = Geometry.from_config(config.schedule)
    partition = Partition.of_pipeline(config.pipeline, geometry.noisy)
    latent_frames = frames_of.latent_frames(frames)
    prompts = ChunkPrompts(PromptSchedule.parse(config.prompts), frames_of, geometry.chunk, config.fps)
    size = VideoSize(frames, latent_frames, geometry.chunk)
    return VideoPlan(size, chunks_for_frames(latent_frames, geometry), geometry, partition, prompts)


def initial_chunks(path: str, latent_shape: tuple[int, int, int], chunk: int) -> list[torch.Tensor]:
    """The whole chunks at the end of an Arrow latents file, oldest first (the sampler keeps the last K)."""
    if not path:
        return []
    clip = read_latents(path)  # [Ch, F, h, w]
    frame_shape = (clip.shape[0], *clip.shape[2:])
    if frame_shape != tuple(latent_shape):
        raise UserError(f"init latents have frames of shape {frame_shape}, the model makes {tuple(latent_shape)}")
    whole = clip.shape[1] // chunk
    if whole == 0:
        raise UserError(f"init latents hold {clip.shape[1]} frames, less than one chunk of {chunk}")
    return list(clip[:, clip.shape[1] - whole * chunk :].split(chunk, dim=1))


def frame_progress(total: int, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, unit="frame", disable=not enabled, desc="generating",
                dynamic_ncols=True)


class Checkpointer:
    """Writes checkpoints of one run when its policy says so, and keeps the status file current."""

    def __init__(self, run: RunFolder, config: Config, plan: VideoPlan, init_count: int):
        self.run, self.plan, self.init_count = run, plan, init_count
        self.store = run.checkpoints(config)
        self.policy = CheckpointPolicy(config.checkpoint)
        self.meta = checkpoint_meta(config, init_count)
        self.out = config.output.out
        self.seconds = 0.0

    def renew(self, config: Config, plan: VideoPlan) -> None:
        """The run's settings changed while it is made (a prompt change, a stop): later checkpoints carry them."""
        self.plan, self.meta = plan, checkpoint_meta(config, self.init_count)

    def timed(self, take: Callable[[], int]) -> float:
        """Run `take`, which makes a checkpoint and returns the frames it covers; count the time it paused the
        run and record the progress in the status file. Returns the seconds spent."""
        started = time.perf_counter()
        frames = take()
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.run.set_status("running", frames, self.plan.size.frames, self.out)
        return seconds


def initial_state(config: Config, plan: VideoPlan, store, latent_shape) -> StartState:
    """The newest valid checkpoint of the run, or a fresh start from nothing or --init-latents."""
    checkpoint = store.latest()
    if checkpoint is not None:
        return start_from(checkpoint, config, plan.prompts, plan.num_chunks)
    return fresh_start(initial_chunks(config.init_latents, latent_shape, plan.geometry.chunk))


def begin(run: RunFolder, config: Config, plan: VideoPlan, latent_shape) -> tuple[StartState, Checkpointer]:
    """Where the run starts (its newest valid checkpoint, or the beginning) and its checkpointer."""
    start = initial_state(config, plan, run.checkpoints(config), latent_shape)
    return start, Checkpointer(run, config, plan, start.init_count)
