"""ProgressivePipeline: long videos from Python in the habits of diffusers (from_pretrained, to, __call__, stream)."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actors.backends.base import Backend
from actors.backends.factory import build_backend, frame_count
from orchestrator.core.config import Config, ModelConfig, validate, written_frame_size
from orchestrator.core.errors import Stopped
from orchestrator.core.rules import seed_value
from orchestrator.core.schedule import Tick, total_ticks
from orchestrator.engine.plan import VideoPlan, plan_video
from orchestrator.engine.runner import uses_ray
from orchestrator.entry.generate import check_request, generation, resume
from orchestrator.state.outputs import LatentsWriter, enlarge
from orchestrator.state.settings import load_config
from pavdm.inputs import Prompt, dtype_name, number, prompt_entries, value_errors
from pavdm.relay import ray_frames
from pavdm.video import Frames, OutputType, VideoChunk, as_output, check_output_type, joined

StepCallback = Callable[["ProgressivePipeline", int, dict[str, Any]], Mapping[str, Any] | None]


@dataclass
class ProgressivePipelineOutput:
    """What a pipeline call returns.

    frames: the video in the output type asked for: 'np' uint8 [F, H, W, 3], 'pt' the same as a torch tensor, 'pil'
        a list of F images, 'latent' the latents [Ch, F', h, w] that `pavdm generate --latents-out` writes.
    run_id: the id of the run under run_root ('' when the call kept no run folder).
    video_path: the finished MP4 (video.mp4 in the run folder, or output.out); None for a stopped run, or one
        without run_root or output.out, whose MP4 went with its temporary folder.
    stopped: callback_on_step_end stopped the run: `frames` hold the chunks finished until then.
    """

    frames: Frames
    run_id: str = ""
    video_path: Path | None = None
    stopped: bool = False


@dataclass
class Request:
    """One call's checked config and plan, and how its chunks are delivered."""

    config: Config
    plan: VideoPlan
    output_type: str
    on_tick: Callable[[Tick], None] | None
    clip: torch.Tensor | None  # init latents given as a tensor [Ch, F, h, w]
    kept: bool  # in a run folder under run_root (else a temporary one)
    progress: bool


def step_info(tick: Tick, num_ticks: int) -> dict[str, Any]:
    """What callback_on_step_end hears of one tick (see ProgressivePipeline.__call__)."""
    levels = tuple((c.chunk, c.level, c.level) for c in tick.context)
    levels += tuple((u.chunk, u.level_before, u.level_after) for u in tick.noisy)
    return {"levels": levels, "finished": tick.finished, "num_ticks": num_ticks, "tick": tick}


@contextlib.contextmanager
def runs_root(request: Request) -> Iterator[Config]:
    """The request's config, with its run folder under run_root, or in a temporary folder (taking no checkpoints,
    holding the initial clip given as a tensor) removed at the end."""
    config = request.config
    if request.kept:
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="pavdm-") as root:
        config.run.root = root
        config.checkpoint.every_shifts = config.checkpoint.every_seconds = 0
        if request.clip is not None:
            config.init_latents = str(Path(root) / "init.arrow")
            writer = LatentsWriter(Path(config.init_latents), (request.clip.shape[0], *request.clip.shape[2:]))
            writer.write(request.clip.float().cpu(), "")
            writer.close()
        yield config


class ProgressivePipeline:
    """Long videos with progressive autoregressive video diffusion (PA-VDM): a sliding window of frames at rising
    noise levels, lowered a little by every model call, from which finished chunks leave while fresh noise enters,
    so that a video grows for as long as asked in constant memory.

    Make one with `from_pretrained`; call it for a video in memory, or `stream` it chunk by chunk. A video is a
    function of its settings and seed alone (docs/design.md §3): the same call gives the same video, and a run
    stopped and resumed gives the same video as one that never stopped.

    Example:
        >>> import pavdm
        >>> pipe = pavdm.ProgressivePipeline.from_pretrained("tiny")
        >>> video = pipe("a magenta square bouncing", seconds=4, seed=0)
        >>> video.frames.shape
        (32, 256, 256, 3)
        >>> pavdm.write_video(video, "square.mp4", fps=8)
        PosixPath('square.mp4')
    """

    def __init__(self, config: Config):
        """A pipeline for a resolved config (from_pretrained makes one from a model name and overrides)."""
        self.config = config
        self._loaded: tuple[str, Backend] | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], torch_dtype: torch.dtype | str | None = None, *,
                        stages: int | None = None, overrides: Sequence[str] = (), **config: Any
                        ) -> ProgressivePipeline:
        """A pipeline for a model: "tiny" (the model shipped with pavdm), "gaussian" (an analytic Gaussian-process
        oracle) or the folder of a SkyReels-V2 model in diffusers format. The weights load at the first call.

        torch_dtype: the transformer's compute dtype (torch.float32, torch.bfloat16 or torch.float16).
        stages: P, the bands of the window; one stage (the default) runs in this process, P >= 2 on Ray with P
            stage actors, as `pavdm generate` does (pipeline={"executor": "ray"} puts one stage on Ray too;
            docs/cluster.md).
        **config: any key of the config (docs/configuration.md), sections as dicts, e.g.
            schedule={"steps": 8, "noisy_chunks": 2}, model={"height": 16, "width": 16}, fps=12,
            checkpoint={"every_shifts": 5}, pipeline={"halo": 1}; seconds, fps and seed become the calls' defaults.
        overrides: the same as the CLI's KEY=VALUE strings, e.g. ["schedule.steps=8"]; applied last.

        An unknown model or key, or a bad value, raises ValueError.

        Example:
            >>> pipe = ProgressivePipeline.from_pretrained("gaussian", schedule={"steps": 12}, overrides=["fps=12"])
        """
        if isinstance(overrides, str):
            raise ValueError(f"overrides is a list of KEY=VALUE strings, got the string {overrides!r}")
        mappings: list[Mapping[str, Any]] = [config]
        if torch_dtype is not None:
            mappings.append({"model": {"dtype": dtype_name(torch_dtype)}})
        if stages is not None:
            mappings.append({"pipeline": {"stages": stages}})
        with value_errors():
            return cls(load_config(overrides=list(overrides), model=os.fspath(name_or_path), mappings=mappings))

    def to(self, device: str | torch.device) -> ProgressivePipeline:
        """Run the model on `device` (model.device, e.g. "cuda"); returns the pipeline.

        Example:
            >>> pipe = ProgressivePipeline.from_pretrained("tiny").to("cuda")
        """
        try:
            self.config.model.device = str(torch.device(device))
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r}: {err}") from None
        return self

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return torch.device(self.config.model.device)

    def __call__(self, prompt: Prompt, *, seconds: float | None = None, fps: float | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None, output_type: OutputType = "np",
                 callback_on_step_end: StepCallback | None = None,
                 init_latents: str | os.PathLike[str] | torch.Tensor | None = None,
                 run_root: str | os.PathLike[str] | None = None, run_id: str | None = None, progress: bool = True
                 ) -> ProgressivePipelineOutput:
        """Make a video and return it whole, for videos that fit in memory (`stream` for any length).

        prompt: a text, or a prompt schedule: "SECONDS:TEXT" entries or (seconds, text) pairs, each prompt holding
            from its time until the next, e.g. [(0, "a red circle bouncing"), (20, "a green square bouncing")].
        seconds, fps: the video's length and frame rate (default: the config's, 10 s and the model's rate).
        seed: a whole number in 0..2^63-1 (default 0). The noise of chunk m is drawn from (seed, m), so that a
            video can be resumed and made in parts; a `generator` is therefore not drawn from: its initial_seed()
            is the seed. Give one of seed and generator.
        output_type: "np" (uint8 [F, H, W, 3]), "pt" (the same, a torch tensor), "pil" (a list of images) or
            "latent" (latents [Ch, F', h, w], as `--latents-out` writes them). Frames are as the CLI's MP4 shows
            them: enlarged output.scale times (8 for tiny; from_pretrained(..., output={"scale": 1}) keeps the
            model's size).
        callback_on_step_end: callback(pipe, tick_index, info), called once per model call (tick) at its end, with
            the in-process executor only. info holds "levels" (chunk, level before, level after) for every chunk in
            the window, oldest first, context chunks (ids < 0 are chunks of the initial clip) keeping their level;
            "finished" (chunks clean after this call), "num_ticks" (of the whole video) and "tick" (the full
            orchestrator.core.schedule.Tick). Levels count down from schedule.steps (pure noise) to 0 (clean). It
            returns None (or its info, as diffusers callbacks do) to go on, or {"stop": True} to stop the run after
            this call: the output then holds the chunks finished so far and `stopped` is True. The window itself
            cannot be changed (a video is a function of its settings).
        init_latents: continue a video: an Arrow latents file (`--latents-out`) or latents [Ch, F, h, w] (a
            tensor only without run_root), whose last chunks become the context.
        run_root: keep the run in run_root/<run_id>/ (status, checkpoints, segments, video.mp4) as `pavdm generate`
            does, resumable with `pipe.resume` or `pavdm resume` if it stops; without it the run lives in a
            temporary folder, takes no checkpoints and is removed at the end.
        run_id: the run's id under run_root (default: a new timestamped one).
        progress: show a progress bar.

        Bad input (a bad value, an output_type that does not exist, a prompt the schedule cannot hold) raises
        ValueError before any work starts.

        Example:
            >>> video = pipe([(0, "a red circle bouncing"), (4, "a blue square bouncing")], seconds=8, seed=3)
            >>> latents = pipe("a red circle bouncing", seconds=2, output_type="latent").frames
            >>> stop_at_10 = lambda pipe, tick, info: {"stop": tick == 10}
            >>> pipe("a red circle bouncing", callback_on_step_end=stop_at_10).stopped
            True
        """
        request = self._request(prompt, seconds, fps, seed, generator, output_type, callback_on_step_end,
                                init_latents, run_root, run_id, progress)
        parts, stopped = [], False
        try:
            for chunk in self._chunks(request):
                parts.append(chunk.frames)
        except Stopped:
            stopped = True
        config, wrote = request.config, not stopped and (request.kept or self.config.output.out)
        return ProgressivePipelineOutput(
            joined(parts, output_type) if parts else self._nothing(request), config.run.id if request.kept else "",
            Path(config.output.out) if wrote else None, stopped)

    def stream(self, prompt: Prompt, *, seconds: float | None = None, fps: float | None = None,
               seed: int | None = None, generator: torch.Generator | None = None, output_type: OutputType = "np",
               callback_on_step_end: StepCallback | None = None,
               init_latents: str | os.PathLike[str] | torch.Tensor | None = None,
               run_root: str | os.PathLike[str] | None = None, run_id: str | None = None, progress: bool = True
               ) -> Iterator[VideoChunk]:
        """Make a video of any length in constant memory: an iterator of VideoChunk(start, frames), every frame
        once and in order, each chunk as soon as it is finished (start: the index of its first frame, or of its
        first latent frame for "latent"). The arguments are those of a call (`help(ProgressivePipeline.__call__)`);
        they are checked, and bad ones raise ValueError, when `stream` is called, before any work.

        Break out of the loop (or close the iterator) to stop. With run_root the run is then left resumable:
        `pipe.resume(run_id, run_root=...)` or `pavdm resume RUN --root ...` finishes it to the same video as
        one that never stopped, from its newest checkpoint (checkpoint={"every_shifts": ...} in from_pretrained;
        on the Ray pipeline it is checkpointed where the loop stopped). A callback's {"stop": True} ends it too.
        On the Ray pipeline a chunk is what its sink wrote in one tick, and "latent" is not offered.

        Example:
            >>> for start, frames in pipe.stream("a red circle bouncing", seconds=3600, run_root="runs", run_id="hour"):
            ...     if start >= 8 * 60:
            ...         break  # a minute is enough for now; `pavdm resume hour` makes the rest
            >>> pavdm.write_video(pipe.stream("a red circle bouncing", seconds=600), "ten.mp4", fps=8)
        """
        request = self._request(prompt, seconds, fps, seed, generator, output_type, callback_on_step_end,
                                init_latents, run_root, run_id, progress)
        return self._until_stopped(request)

    def resume(self, run: str | os.PathLike[str], *, run_root: str | os.PathLike[str] = "runs",
               overrides: Sequence[str] = (), progress: bool = True) -> Path:
        """Finish a stopped run (made with run_root, or by `pavdm generate`) from its newest checkpoint, as
        `pavdm resume` does, to the same video as one that never stopped; returns its MP4's path. run: its id
        under run_root, or its folder. overrides: KEY=VALUE strings that change how it runs (pipeline.*,
        checkpoint.*), never what it makes. The run keeps its own settings, model included.

        Example:
            >>> pipe.resume("hour", run_root="runs")
            PosixPath('.../runs/hour/video.mp4')
        """
        with value_errors():
            return resume(os.fspath(run), os.fspath(run_root), list(overrides), progress,
                          backend_of=self._backend).out

    # --- inside a call ----------------------------------------------------------------------------------------

    def _request(self, prompt: Prompt, seconds: float | None, fps: float | None, seed: int | None,
                 generator: torch.Generator | None, output_type: str, callback: StepCallback | None,
                 init_latents: str | os.PathLike[str] | torch.Tensor | None, run_root: str | os.PathLike[str] | None,
                 run_id: str | None, progress: bool) -> Request:
        """The call's config and plan, every argument checked before any work."""
        check_output_type(output_type)
        config = copy.deepcopy(self.config)
        in_process = not uses_ray(config.pipeline)
        if not in_process and (output_type == "latent" or callback is not None):
            raise ValueError("output_type='latent' and callback_on_step_end need the in-process executor; "
                             f"this pipeline runs on Ray (pipeline.stages={config.pipeline.stages}, "
                             f"pipeline.executor={config.pipeline.executor})")
        if seed is not None and generator is not None:
            raise ValueError("give a seed or a generator, not both")
        if run_root is None and run_id is not None:
            raise ValueError("run_id names a run under run_root: give run_root as well")
        clip = init_latents if isinstance(init_latents, torch.Tensor) else None
        if clip is not None and (clip.ndim != 4 or run_root is not None):
            raise ValueError("init_latents as a tensor must be latents [Ch, F, h, w], and is taken only without "
                             "run_root (a kept run reads its initial clip again when resumed: give a file)")
        with value_errors():
            config.prompts = prompt_entries(prompt)
            if seconds is not None:
                config.seconds = number("seconds", seconds)
            if fps is not None:
                config.fps = number("fps", fps)
            if generator is not None:
                seed = generator.initial_seed()
            if seed is not None:
                config.seed = seed_value(seed)
            if init_latents is not None and not isinstance(init_latents, torch.Tensor):
                config.init_latents = os.fspath(init_latents)
            if run_root is not None:
                config.run.root, config.run.id = os.fspath(run_root), run_id or ""
            validate(config)
            check_request(config)
            plan = plan_video(config, frame_count(config.model))
        on_tick = None
        if callback is not None:
            on_tick = self._on_tick(callback, total_ticks(plan.geometry, plan.num_chunks))
        return Request(config, plan, output_type, on_tick, clip, run_root is not None, progress)

    def _on_tick(self, callback: StepCallback, num_ticks: int) -> Callable[[Tick], None]:
        """The sampler's per-tick hook that calls `callback` and stops the run when it asks to."""

        def on_tick(tick: Tick) -> None:
            answer = callback(self, tick.index, step_info(tick, num_ticks))
            if answer is not None and not isinstance(answer, Mapping):
                raise TypeError(f"callback_on_step_end must return None or a dict, got {type(answer).__name__}")
            if answer and answer.get("stop"):
                raise Stopped(f"callback_on_step_end stopped the run after tick {tick.index}")

        return on_tick

    def _until_stopped(self, request: Request) -> Iterator[VideoChunk]:
        with contextlib.suppress(Stopped):
            yield from self._chunks(request)

    def _chunks(self, request: Request) -> Iterator[VideoChunk]:
        """The request's video, chunk by chunk in its output type; closing it stops the run."""
        scale, output_type = request.config.output.scale, request.output_type
        with value_errors(), runs_root(request) as config:
            if not uses_ray(config.pipeline):
                with contextlib.closing(generation(config, request.progress, request.on_tick, self._backend,
                                                   keep_chunks=True)) as steps:
                    for chunk in steps:
                        if output_type == "latent":
                            yield VideoChunk(chunk.chunk * request.plan.geometry.chunk, chunk.latents)
                        else:
                            yield VideoChunk(chunk.first, as_output(enlarge(chunk.frames, scale), output_type))
            else:
                with contextlib.closing(ray_frames(config, request.progress)) as batches:
                    for first, frames in batches:
                        yield VideoChunk(first, as_output(enlarge(frames, scale), output_type))

    def _backend(self, model: ModelConfig) -> Backend:
        """The in-process model, loaded once and kept while its settings stay (`to` changes them)."""
        key = repr(model)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # let the old one go before the new one loads
            self._loaded = (key, build_backend(model))
        return self._loaded[1]

    def _nothing(self, request: Request) -> Frames:
        """The output of a run stopped before its first chunk: no frames, in the output type's shape."""
        if request.output_type == "latent":
            channels, height, width = self._backend(request.config.model).latent_shape
            return torch.zeros((channels, 0, height, width))
        width, height = written_frame_size(request.config)
        return as_output(torch.zeros((0, height, width, 3), dtype=torch.uint8), request.output_type)
