"""One-GPU check of the in-process sampler on a random SkyReels-V2-DF-1.3B-shaped transformer: speed and memory."""

# bash benchmarks/gpu_check.sh            # on the GPU machine: 1.3B shape, bf16, 544x960 video (68x120 latents)
# bash benchmarks/gpu_check.sh --tiny     # CPU smoke test: 2 layers of width 32, 8x8 latents, float32
#
# The reference sampler (orchestrator.core.sampler.sample, whose denoising the in-process executor's stage runs)
# drives SkyReelsBackend.velocity over the paper's window (C=5, N=6, S=30, K=1) with guidance 1 and one random text
# embedding of the backend's length; no VAE, no text encoder. The in-process executor (orchestrator.engine.local)
# is not used whole: its sink imports PyAV, and its backend needs a saved model and a text encoder.
# Reported: the bare transformer forward per window length (CUDA events, median after a warm-up), the sampler's
# frames/s for a short and a long video against the sum of those forwards over the same calls, and peak GPU memory
# (weights included).

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from diffusers import SkyReelsV2Transformer3DModel

from actors.backends.skyreels import TRAIN_TIMESTEPS, SkyReelsBackend, TextCond
from orchestrator.core.config import ModelConfig, ScheduleConfig
from orchestrator.core.frames import FrameCount
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.core.schedule import Geometry, ticks

# Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers' transformer (diffusers' convert_skyreelsv2_to_diffusers.py) without
# inject_sample_info: SkyReelsBackend.velocity passes no fps, which that fps embedding (one MLP per call) needs.
DF_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)
TINY = DF_1_3B | dict(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=16, ffn_dim=64, num_layers=2)
WAN_VAE_TEMPORAL = 4  # video frames per latent frame after the first (AutoencoderKLWan), for frames/s
WAN_VAE_SPATIAL = 8
PAPER_WINDOW = ScheduleConfig(chunk=5, noisy_chunks=6, steps=30, context_chunks=1)


def random_transformer(shape: dict, dtype: torch.dtype, device: torch.device) -> SkyReelsV2Transformer3DModel:
    """Random weights in the dtypes from_pretrained(torch_dtype=dtype) gives: its fp32 modules stay float32."""
    torch.manual_seed(0)
    with device:
        model = SkyReelsV2Transformer3DModel(**shape)
    keep = set(model._keep_in_fp32_modules)
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model.eval()


def backend_of(model: SkyReelsV2Transformer3DModel, device: torch.device, dtype: torch.dtype) -> SkyReelsBackend:
    """The backend around an in-memory transformer (its __init__ loads a folder and a text encoder)."""
    backend = SkyReelsBackend.__new__(SkyReelsBackend)
    backend.device, backend.dtype, backend.transformer = device, dtype, model
    backend.guidance, backend.negative_prompt = ModelConfig().guidance_scale, ""
    return backend


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def forward_seconds(backend: SkyReelsBackend, text: torch.Tensor, frames: int, latents: tuple[int, int],
                    repeats: int) -> list[float]:
    """Seconds of bare transformer forwards over `frames` latent frames, inputs already on the device."""
    model, device = backend.transformer, backend.device
    channels = model.config.in_channels
    x = torch.randn(1, channels, frames, *latents, device=device, dtype=backend.dtype)  # [B, Ch, F, h, w]
    timestep = torch.rand(1, frames, device=device) * TRAIN_TIMESTEPS  # [B, F]

    def forward() -> None:
        model(hidden_states=x, timestep=timestep, encoder_hidden_states=text, enable_diffusion_forcing=True,
              return_dict=False)

    forward()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            forward()
            times.append(time.perf_counter() - started)
    return times


def window_chunks(geometry: Geometry, chunks: int) -> Counter:
    """How many model calls a video makes over windows of each length (in chunks, context included)."""
    return Counter(len(tick.context) + len(tick.noisy) for tick in ticks(geometry, chunks))


def bound_seconds(geometry: Geometry, chunks: int, forward: dict[int, float]) -> float:
    """The video's model calls timed alone: the median bare forward of each call's window length, summed."""
    return sum(count * forward[length] for length, count in window_chunks(geometry, chunks).items())


def run_video(backend: SkyReelsBackend, geometry: Geometry, chunks: int, latents: tuple[int, int],
              cond: TextCond) -> tuple[float, float]:
    """Wall seconds of the reference sampler making `chunks` chunks, and its peak GPU memory in GiB."""
    device = backend.device
    noise = NoiseSource(0, (backend.transformer.config.in_channels, geometry.chunk, *latents))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    finished = [m for m, _ in sample(backend.velocity, geometry, chunks, noise, lambda _: cond)]
    sync(device)
    seconds = time.perf_counter() - started
    assert finished == list(range(chunks)), finished
    return seconds, torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def video_report(geometry: Geometry, chunks: int, seconds: float, peak_gib: float, forward: dict[int, float]) -> dict:
    """One video's numbers; frames are those the Wan VAE would decode its latents to."""
    latent_frames = chunks * geometry.chunk
    video_frames = FrameCount(WAN_VAE_TEMPORAL).video_frames(latent_frames)
    calls = sum(window_chunks(geometry, chunks).values())
    bound = bound_seconds(geometry, chunks, forward)
    full = forward[geometry.context + geometry.noisy]
    return {
        "chunks": chunks, "latent_frames": latent_frames, "video_frames": video_frames, "calls": calls,
        "sampler_s": seconds, "bound_s": bound, "sampler_over_bound": seconds / bound,
        "video_frames_per_s": video_frames / seconds,
        "latent_frames_per_s": latent_frames / seconds, "per_call_s": seconds / calls,
        "per_call_over_full_forward": seconds / calls / full, "peak_gib": peak_gib,
    }


def fitted_long(geometry: Geometry, short: int, long: int, forward: dict[int, float], left_s: float) -> int:
    """The long video's chunks, fewer if both videos' predicted time (bound + 10 %) would overrun `left_s`."""
    while long > short + 1 and 1.1 * (bound_seconds(geometry, short, forward)
                                      + bound_seconds(geometry, long, forward)) > left_s:
        long -= 1
    return long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, 8x8 latents, float32")
    parser.add_argument("--short-chunks", type=int, help="chunks of the short video (default 4, tiny 2)")
    parser.add_argument("--long-chunks", type=int, help="chunks of the long video (default 12, tiny 6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per window length (default 5)")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="seconds this script may take; the long video is shortened to fit (default 400)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.tiny:
        torch.set_num_threads(1)  # a smoke test on a shared CPU
        shape, latents, dtype, device, short, long = TINY, (8, 8), torch.float32, torch.device("cpu"), 2, 6
    else:
        assert torch.cuda.is_available(), "the full-size check needs a CUDA GPU (use --tiny on a CPU)"
        shape, latents, dtype, device, short, long = DF_1_3B, (68, 120), torch.bfloat16, torch.device("cuda"), 4, 12
    short, long = args.short_chunks or short, args.long_chunks or long
    geometry = Geometry.from_config(PAPER_WINDOW)

    model = random_transformer(shape, dtype, device)
    weights_gib = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    backend = backend_of(model, device, dtype)
    text = torch.randn(1, ModelConfig().max_text_tokens, shape["text_dim"], device=device).to(dtype)  # [1, L, D]
    cond = TextCond(text, None)

    full = geometry.context + geometry.noisy
    lengths = sorted(set(window_chunks(geometry, max(short, long))) | {full})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # not the float32 weights the model was built in
    samples = {c: forward_seconds(backend, text, c * geometry.chunk, latents, args.repeats) for c in lengths}
    forward = {c: statistics.median(times) for c, times in samples.items()}
    full_peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    fitted = fitted_long(geometry, short, long, forward, args.budget_s - (time.perf_counter() - started))

    videos = {}
    for name, chunks in (("short", short), ("long", fitted)):
        seconds, peak = run_video(backend, geometry, chunks, latents, cond)
        videos[name] = video_report(geometry, chunks, seconds, peak, forward)

    tokens = full * geometry.chunk * (latents[0] // shape["patch_size"][1]) * (latents[1] // shape["patch_size"][2])
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
        "model": shape,
        "parameters": sum(p.numel() for p in model.parameters()), "weights_gib": weights_gib,
        "latents_hw": list(latents), "video_hw": [n * WAN_VAE_SPATIAL for n in latents],
        "window": {"chunk": geometry.chunk, "noisy": geometry.noisy, "steps": geometry.steps,
                   "context": geometry.context, "shift": geometry.shift},
        "guidance": backend.guidance, "text_tokens": text.shape[1],
        "forward_s_by_window_chunks": forward, "forward_samples_s": samples,
        "full_window": {"latent_frames": full * geometry.chunk, "tokens": tokens, "forward_s": forward[full],
                        "peak_gib": full_peak_gib},
        "long_chunks_requested": long, "videos": videos, "elapsed_s": time.perf_counter() - started,
    }
    print(f"{report['device']}, {report['dtype']}, {report['parameters'] / 1e6:,.2f} M parameters "
          f"({weights_gib:.2f} GiB), latents {latents[0]}x{latents[1]}, window C={geometry.chunk} N={geometry.noisy} "
          f"S={geometry.steps} K={geometry.context}, guidance {backend.guidance:g}, {text.shape[1]} text tokens")
    print(f"bare forward, median of {args.repeats}: " + ", ".join(f"{c} chunks {forward[c]:.3f} s" for c in lengths))
    print(f"full window ({full * geometry.chunk} latent frames, {tokens} tokens): {forward[full]:.3f} s, "
          f"peak {full_peak_gib:.2f} GiB")
    if fitted < long:
        print(f"long video shortened from {long} to {fitted} chunks to stay within --budget-s {args.budget_s:g}")
    for name, v in videos.items():
        print(f"{name}: {v['chunks']} chunks = {v['video_frames']} frames ({v['latent_frames']} latent), "
              f"{v['calls']} calls, {v['sampler_s']:.1f} s, {v['video_frames_per_s']:.2f} frames/s; "
              f"sampler / bound {v['sampler_over_bound']:.3f}, per call / full forward "
              f"{v['per_call_over_full_forward']:.3f}, peak {v['peak_gib']:.2f} GiB with weights")
    print(f"elapsed {report['elapsed_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
