"""Quality over time: long videos for fixed prompts and seeds under every schedule, scored per 2-s segment."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actors.backends.base import Backend, PromptEncodings
from actors.backends.factory import build_backend, frame_count
from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.engine.plan import plan_video
from orchestrator.state.settings import load_config
from training.world.probe import score_video
from training.world.scenes import Scene, parse_caption

PROMPTS = (
    "a red circle bouncing",
    "a blue square bouncing",
    "a green triangle and a yellow circle bouncing",
    "a magenta square and a cyan triangle bouncing",
    "a white circle and a red triangle bouncing",
)
METRICS = ("presence", "count_stability", "size_stability", "smoothness", "background_clean", "sharpness",
           "colour_drift", "abruptness")
WINDOW_SECONDS = 10.0  # the first and the last this many seconds are compared
BOOTSTRAP = 2000  # resamplings of the videos behind the interval of each change


def world_scenes(prompts: list[str]) -> dict[str, Scene]:
    """The scene each prompt asks for, read before any work so that a prompt the probe cannot score fails first."""
    try:
        return {prompt: parse_caption(prompt) for prompt in prompts}
    except ValueError as err:
        raise UserError(f"the probe scores only world captions: {err}") from None


def render_frames(config: Config, backend: Backend) -> np.ndarray:
    """A whole video in this process, decoded without lossy encoding: [T, H, W, 3] uint8."""
    plan = plan_video(config, frame_count(config.model))
    g = plan.geometry
    encodings = PromptEncodings(backend)
    noise = NoiseSource(config.seed, (backend.latent_shape[0], g.chunk, *backend.latent_shape[1:]))
    decoder = backend.codec.decoder()
    frames = []
    for m, x in sample(backend.velocity, g, plan.num_chunks, noise, lambda c: encodings.get(plan.prompts.of(c))):
        keep = min(g.chunk, plan.size.latent_frames - m * g.chunk)
        frames.append(decoder.decode(x[:, :keep]))
    return torch.cat(frames).numpy()[: plan.size.frames]


@dataclass
class Scored:
    kind: str
    prompt: str
    seed: int
    segments: list[dict[str, float]]


def _window_sums(scored: list[Scored], metric: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Per video, the sum and the count of a metric's non-NaN segments within [start, end] s: two [V] arrays."""
    values = [[seg[metric] for seg in s.segments if seg["start"] >= start and seg["end"] <= end
               and not math.isnan(seg[metric])] for s in scored]
    return np.array([sum(v) for v in values], dtype=float), np.array([len(v) for v in values], dtype=float)


def _pooled(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean over all segments of the videos along the last axis; NaN without samples."""
    with np.errstate(invalid="ignore"):
        return sums.sum(-1) / counts.sum(-1)


def _relative_change(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """(last - first) / |first|, NaN where first is 0 or NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(first != 0, (last - first) / np.abs(first), np.nan)


def summarise(scored: list[Scored], seconds: float) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> metric -> {first, last, change, low, high}: means over videos of the first and last
    WINDOW_SECONDS, and the 95 % interval of the change when the videos are resampled (BOOTSTRAP draws)."""
    summary = {}
    for kind in dict.fromkeys(s.kind for s in scored):
        videos = [s for s in scored if s.kind == kind]
        draws = np.random.default_rng(0).integers(0, len(videos), (BOOTSTRAP, len(videos)))  # [B, V]
        rows = {}
        for metric in METRICS:
            first = _window_sums(videos, metric, 0.0, WINDOW_SECONDS)  # ([V], [V])
            last = _window_sums(videos, metric, seconds - WINDOW_SECONDS, math.inf)
            a, b = _pooled(*first), _pooled(*last)
            resampled = _relative_change(_pooled(*(x[draws] for x in first)), _pooled(*(x[draws] for x in last)))  # [B]
            low, high = np.nanpercentile(resampled, [2.5, 97.5]) if np.isfinite(resampled).any() else (math.nan,) * 2
            rows[metric] = {"first": float(a), "last": float(b), "change": float(_relative_change(a, b)),
                            "low": float(low), "high": float(high)}
        summary[kind] = rows
    return summary


def plot(scored: list[Scored], out_dir: Path) -> list[Path]:
    """One PNG per metric: its mean over prompts and seeds against time, a line per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in METRICS:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for kind in dict.fromkeys(s.kind for s in scored):
            runs = [s.segments for s in scored if s.kind == kind]
            times = [seg["start"] for seg in runs[0]]
            with warnings.catch_warnings():  # a segment with no sample in any video stays NaN (a gap in the line)
                warnings.simplefilter("ignore", RuntimeWarning)
                values = np.nanmean([[seg[metric] for seg in segs] for segs in runs], axis=0)
            ax.plot(times, values, label=kind)
        ax.set_xlabel("seconds")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def framed_row(frames: np.ndarray) -> np.ndarray:
    """[K, H, W, 3] frames side by side, each framed in white: [H+2, K*(W+2), 3]."""
    return np.concatenate([np.pad(f, ((1, 1), (1, 1), (0, 0)), constant_values=255) for f in frames], axis=1)


def save_enlarged(image: np.ndarray, path: Path, scale: int = 3) -> Path:
    """An [H, W, 3] uint8 image as a PNG, every pixel a scale x scale block."""
    import matplotlib.image

    matplotlib.image.imsave(path, image.repeat(scale, axis=0).repeat(scale, axis=1))
    return path


def frame_strip(frames: np.ndarray, fps: float, every_seconds: float, path: Path) -> Path:
    """A PNG of frames taken every `every_seconds`, side by side, enlarged."""
    return save_enlarged(framed_row(frames[:: max(1, round(every_seconds * fps))]), path)


def report(summary: dict, seconds: float) -> str:
    """A Markdown table: first vs last WINDOW_SECONDS of every metric for every schedule, with the change's
    95 % interval over resampled videos."""
    lines = [f"| schedule | metric | first {WINDOW_SECONDS:g} s | last {WINDOW_SECONDS:g} s | change | 95 % interval |",
             "|---|---|---|---|---|---|"]
    for kind, rows in summary.items():
        for metric, row in rows.items():
            lines.append(f"| {kind} | {metric} | {row['first']:.3f} | {row['last']:.3f} | {row['change']:+.1%} "
                         f"| {row['low']:+.1%} to {row['high']:+.1%} |")
    return "\n".join(lines) + "\n"


def evaluate(model: str, seconds: float, seeds: list[int], prompts: list[str], kinds: list[str], out_dir: Path,
             overrides: list[str] = (), progress: bool = True) -> dict:
    """Generate, score, summarise, plot; writes results.json, report.md, <metric>.png and strip.png."""
    scenes = world_scenes(prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored: list[Scored] = []
    backend = None
    jobs = [(kind, prompt, seed) for kind in kinds for prompt in prompts for seed in seeds]
    for kind, prompt, seed in tqdm(jobs, desc="evaluating", disable=not progress):
        config = load_config([], [*overrides, f"schedule.kind={kind}", "pipeline.stages=0"], model=model)
        config.prompts, config.seconds, config.seed = [prompt], seconds, seed
        backend = backend or build_backend(config.model)
        frames = render_frames(config, backend)
        scored.append(Scored(kind, prompt, seed, score_video(frames, scenes[prompt], config.fps)))
        if kind == kinds[0] and prompt == prompts[0] and seed == seeds[0]:
            frame_strip(frames, config.fps, seconds / 10, out_dir / "strip.png")
    summary = summarise(scored, seconds)
    (out_dir / "results.json").write_text(json.dumps(
        {"summary": summary, "videos": [s.__dict__ for s in scored]}, indent=1))
    (out_dir / "report.md").write_text(report(summary, seconds))
    plot(scored, out_dir)
    return summary
