"""One generation: plan the video, then run it in process (reference sampler) or on the Ray pipeline."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from actors.backends.factory import build_backend, frame_count
from actors.video_sink import VideoSize, config_path_for, write_outputs
from orchestrator.core.config import Config, apply_overrides, video_identity
from orchestrator.core.errors import UserError, ending
from orchestrator.core.prompts import PromptSchedule
from orchestrator.core.schedule import Tick
from orchestrator.engine.local import WrittenChunk, run_to_end
from orchestrator.engine.plan import plan_video
from orchestrator.engine.runner import BackendOf, video_steps
from orchestrator.engine.steering import Steering
from orchestrator.state import segments
from orchestrator.state.outputs import check_writable, same_file
from orchestrator.state.run_state import (
    differing_keys,
)
from orchestrator.state.runs import RunFolder

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    frames: int
    seconds: float
    out: Path
    run_id: str = ""
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints (incl. closing segments)
    restarts: int = 0
    first_frame_seconds: float | None = None  # from the start of this run (or resume) to its first frame


def check_request(config: Config) -> None:
    """Everything about the request that can be checked before any model is loaded."""
    PromptSchedule.parse(config.prompts)
    check_paths(config)


def check_paths(config: Config) -> None:
    """Outputs of the right kind in writable folders, each a file of its own and none of them an input."""
    named: dict[str, Path] = {}
    if config.init_latents:
        named["--init-latents"] = Path(config.init_latents)
        if not named["--init-latents"].is_file():
            raise UserError(f"init latents file '{config.init_latents}' does not exist")
    if config.output.out:
        out = Path(config.output.out)
        check_writable(out, "--out")
        if out.suffix.lower() != ".mp4":
            raise UserError(f"--out '{out}' must end in .mp4: the video is written as H.264 in MP4")
        named["--out"] = out
        named["--out's saved config"] = config_path_for(out)
    if config.output.latents_out:
        check_writable(Path(config.output.latents_out), "--latents-out")
        named["--latents-out"] = Path(config.output.latents_out)
    for (first, a), (second, b) in itertools.combinations(named.items(), 2):
        if same_file(a, b):
            raise UserError(f"{first} and {second} name the same file '{a}': every output needs a name of its own, "
                            "and no output may replace an input")


def made_segments(run: RunFolder, config: Config, size: VideoSize) -> tuple[list[Path], list[Path]] | None:
    """The segments of a run whose frames are all made (only writing the outputs was left), else None."""
    frames, video = segments.covering(run.segments, "seg")
    latent_frames, latents = segments.covering(run.segments, "lat")
    if frames == size.frames and (not config.output.latents_out or latent_frames == size.latent_frames):
        return video, latents
    return None


def execution(run: RunFolder, config: Config, progress: bool, on_tick: Callable[[Tick], None] | None = None,
              backend_of: BackendOf = build_backend, keep_chunks: bool = False, steering: Steering | None = None
              ) -> Generator[WrittenChunk, None, GenerationResult]:
    """Run (or continue) a run to completion on the executor its config asks for, keeping its status file true.
    In process, with keep_chunks, it yields every chunk once written; on_tick hears of every tick (in process:
    once made); backend_of loads the in-process model; `steering` takes prompt changes and a stop while it runs."""
    plan = plan_video(config, frame_count(config.model))
    started = time.perf_counter()
    run.set_status("running", None, plan.size.frames, config.output.out)
    made = made_segments(run, config, plan.size)
    try:
        if made is not None:  # every frame is in segments: only the outputs are left to write
            out, restarts, checkpoint_seconds, first = write_outputs(config, run.segments, *made), 0, 0.0, None
        else:
            job, restarts = yield from video_steps(config, run, progress, backend_of, keep_chunks, on_tick, steering)
            out, checkpoint_seconds, first = job.out, job.checkpoint_seconds, job.first_frame_seconds
    except BaseException as err:
        state, reason = ending(err)
        run.set_status(state, None, plan.size.frames, config.output.out, reason)
        raise
    plan = plan_video(config, frame_count(config.model))  # a stop may have shortened it
    run.set_status("completed", plan.size.frames, plan.size.frames, str(out))
    return GenerationResult(plan.size.frames, time.perf_counter() - started, out, run.run_id, checkpoint_seconds,
                            restarts, first)


def execute(run: RunFolder, config: Config, progress: bool, backend_of: BackendOf = build_backend,
            steering: Steering | None = None) -> GenerationResult:
    """Run (or continue) a run to completion, keeping its status file true."""
    return run_to_end(execution(run, config, progress, backend_of=backend_of, steering=steering))


def new_run(config: Config) -> RunFolder:
    """Check the request, then create its run folder (topology and length errors before any folder exists)."""
    check_request(config)
    plan = plan_video(config, frame_count(config.model))
    for line in plan.prompts.never_shown(plan.num_chunks):
        log.warning(line)
    return RunFolder.create(config)


def generation(config: Config, progress: bool = True, on_tick: Callable[[Tick], None] | None = None,
               backend_of: BackendOf = build_backend, keep_chunks: bool = False, steering: Steering | None = None
               ) -> Generator[WrittenChunk, None, GenerationResult]:
    """generate(), yielding what execution() yields."""
    run = new_run(config)
    try:
        return (yield from execution(run, config, progress, on_tick, backend_of, keep_chunks, steering))
    except UserError:
        run.discard_if_unused(run.checkpoints(config))  # bad input found late (e.g. resources): leave nothing
        raise


def generate(config: Config, progress: bool = True, steering: Steering | None = None) -> GenerationResult:
    """Start a new run; its outputs appear under their final names only if it completes (in process or on Ray,
    as pipeline.executor says); `steering` may steer it while it runs."""
    return run_to_end(generation(config, progress, steering=steering))


def resume(run_ref: str, root: str, overrides: list[str], progress: bool = True, out: str | None = None,
           latents_out: str | None = None, backend_of: BackendOf = build_backend, steering: Steering | None = None
           ) -> GenerationResult:
    """Continue a stopped run from its newest valid checkpoint; refuse overrides that change the video. `out`
    and `latents_out` move its outputs (the latents only where the run writes them); `steering` steers it."""
    run = RunFolder.find(run_ref, root)
    saved = run.load_config()
    config = apply_overrides(saved, overrides)
    if out:
        config.output.out = str(Path(out).resolve())
    if latents_out:
        if not saved.output.latents_out:
            raise UserError(f"run {run.run_id} writes no latents; --latents-out cannot be added when resuming")
        config.output.latents_out = str(Path(latents_out).resolve())
    changed = differing_keys(video_identity(saved), video_identity(config))
    if changed:
        raise UserError(f"cannot resume with settings that change the video: {', '.join(changed)}")
    status = run.status()
    if status is not None and status.state == "completed":
        raise UserError(f"run {run.run_id} is already complete: {status.out}")
    check_request(config)
    run.save_config(config)
    return execute(run, config, progress, backend_of, steering)
