"""Trains a SkyReels-V2 transformer with the progressive recipe on the procedural world; saves it for diffusers."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actors.backends.skyreels import TRAIN_TIMESTEPS
from actors.backends.text import load_text_encoder
from actors.codecs import from_uint8
from orchestrator.core.config import ModelConfig
from orchestrator.core.schedule import Geometry
from training.recipe.config import TrainConfig
from training.recipe.deepen import check_architecture, deepen
from training.recipe.regroup import regroup
from training.recipe.stills import still_clips, still_sigmas
from training.recipe.widen import widen
from training.recipe.windows import WindowShape, noisy_inputs, training_sigmas, window_shape
from training.world.scenes import random_scene, render_clip

STATE_FILE = "training_state.pt"


def build_transformer(config: TrainConfig, text_dim: int):
    from diffusers import SkyReelsV2Transformer3DModel

    arch = config.architecture
    if config.init_from:
        model = SkyReelsV2Transformer3DModel.from_pretrained(config.init_from, subfolder="transformer")
        factor = check_architecture(model.config, arch)
        model = regroup(model, arch.head_dim)
        return deepen(widen(model, factor, torch.Generator().manual_seed(config.seed)), arch.layers)
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, arch.patch, arch.patch), num_attention_heads=arch.heads, attention_head_dim=arch.head_dim,
        in_channels=3, out_channels=3, text_dim=text_dim, freq_dim=64, ffn_dim=arch.ffn_dim, num_layers=arch.layers,
        rope_max_seq_len=1024,
    )


class CaptionEmbeddings:
    """MiniLM token embeddings of captions, cached: the world has a few hundred distinct captions."""

    def __init__(self, max_tokens: int = 32):
        self.encoder = load_text_encoder(ModelConfig(text_encoder="minilm", max_text_tokens=max_tokens),
                                         torch.device("cpu"))
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for text in captions:
            if text not in self.cache:
                self.cache[text] = self.encoder.encode(text)[0]  # [L, D]
        return torch.stack([self.cache[text] for text in captions])  # [B, L, D]


def sample_batch(config: TrainConfig, geometry: Geometry, shape: WindowShape, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, list[str]]:
    """Clean clips [B, 3, F, H, W] in [-1, 1] covering the context (if shown) and the present noisy chunks."""
    chunks = (geometry.context if shape.context else 0) + shape.last - shape.first + 1
    clips, captions = [], []
    for _ in range(config.optim.batch):
        scene = random_scene(rng, config.data.max_objects)
        seed = int(rng.integers(2**31))
        start = int(rng.integers(0, 4 * geometry.chunk))  # a random phase of the motion
        frames = render_clip(scene, seed, chunks * geometry.chunk, config.data.size, config.data.fps,
                             start)  # [F, H, W, 3] uint8
        clips.append(from_uint8(torch.from_numpy(frames)))  # [3, F, H, W]
        captions.append(scene.caption)
    return torch.stack(clips), captions


def context_frames(geometry: Geometry, shape: WindowShape) -> int:
    """Frames of clean context at the front of a training sample."""
    return geometry.context * geometry.chunk if shape.context else 0


def window_sigmas(geometry: Geometry, shape: WindowShape, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A window batch's per-frame levels [B, F]: 0 over the clean context frames, then each noisy chunk's
    staggered level repeated over its frames."""
    noisy = training_sigmas(geometry, shape, batch, generator).repeat_interleave(geometry.chunk, dim=1)  # [B, P*C]
    context = torch.zeros(batch, context_frames(geometry, shape))  # [B, K*C]
    return torch.cat([context, noisy], dim=1)  # [B, K*C + P*C]


def velocity_loss(prediction: torch.Tensor, target: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Mean squared error of [B, 3, F, H, W] tensors over the frames above level 0 of per-frame levels [B, F]:
    the clean context (and a frame that happens to sit at level 0) stays out of the loss."""
    scored = sigmas > 0  # [B, F]
    return ((prediction - target) ** 2).permute(0, 2, 1, 3, 4)[scored].mean()  # [N, 3, H, W] -> []


def is_still_step(config: TrainConfig, step: int) -> bool:
    """Whether a step trains on stills: in a stills phase (data.stills_every = 1) all but every
    data.windows_every-th one (the last of each group); none without stills."""
    windows_every = config.data.windows_every
    is_window_step = bool(windows_every) and step % windows_every == windows_every - 1
    return bool(config.data.stills_every) and not is_window_step


SUMMARY_PREFIX = {"video": "", "stills": "stills_"}  # summary keys of each kind of step: loss_first_50, ...


def loss_label(kind: str) -> str:
    """How a kind of step's loss is named in the progress bar and the closing line."""
    return "loss" if kind == "video" else kind


def loss_summary(losses: dict[str, list[float]]) -> dict[str, float]:
    """The mean loss of the first and the last 50 steps of each kind of step the run took."""
    summary = {}
    for kind, prefix in SUMMARY_PREFIX.items():
        if losses[kind]:
            summary[f"{prefix}loss_first_50"] = float(np.mean(losses[kind][:50]))
            summary[f"{prefix}loss_last_50"] = float(np.mean(losses[kind][-50:]))
    return summary


def describe_losses(summary: dict) -> str:
    """'loss 0.1000 -> 0.0800; stills 0.0900 -> 0.0700': first and last 50 steps of each kind the run took."""
    return "; ".join(f"{loss_label(kind)} {summary[prefix + 'loss_first_50']:.4f} -> "
                     f"{summary[prefix + 'loss_last_50']:.4f}"
                     for kind, prefix in SUMMARY_PREFIX.items() if prefix + "loss_first_50" in summary)


def learning_rate(config: TrainConfig, step: int) -> float:
    optim = config.optim
    if step < optim.warmup:
        return optim.lr * (step + 1) / optim.warmup
    progress = (step - optim.warmup) / max(1, optim.steps - optim.warmup)
    return optim.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(config: TrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """Run the recipe; returns a summary (steps, seconds, final loss) also written to <out>/training.json."""
    from diffusers.training_utils import EMAModel

    if config.optim.threads:
        torch.set_num_threads(config.optim.threads)
    torch.manual_seed(config.seed)
    geometry = Geometry.from_config(config.schedule)
    out = Path(config.out)
    captions = CaptionEmbeddings()
    model = build_transformer(config, captions.encoder.dim).train()
    ema = EMAModel(model.parameters(), decay=config.optim.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    step, losses, started = 0, {"video": [], "stills": []}, time.perf_counter()  # the loss of every step, by kind
    if resume and (out / STATE_FILE).is_file():
        state = torch.load(out / STATE_FILE, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        rng.bit_generator.state = state["rng"]
        step, losses = state["step"], state["losses"]
    empty = captions([""])[0]  # [L, D]: the unconditional prompt of classifier-free guidance
    bar = tqdm(total=config.optim.steps, initial=step, disable=not progress, desc="training", dynamic_ncols=True)
    data = config.data
    while step < config.optim.steps:
        still = is_still_step(config, step)
        shape = None if still else window_shape(geometry, data.fill_drain_fraction, generator)
        clean, texts = (still_clips(data.stills_batch, data.stills_max_objects or data.max_objects, data.stills_frames,
                                    data.size, data.fps, rng) if still
                        else sample_batch(config, geometry, shape, rng))  # [B, 3, F, H, W]
        text = captions(texts)  # [B, L, D]
        drop = torch.rand(len(texts), generator=generator) < data.text_dropout
        text[drop] = empty
        sigmas = (still_sigmas(len(texts), data.stills_frames, data.stills_shift, generator) if still
                  else window_sigmas(geometry, shape, len(texts), generator))  # [B, F]
        x, target = noisy_inputs(clean, sigmas, generator)  # [B, 3, F, H, W] each
        prediction = model(hidden_states=x, timestep=sigmas * TRAIN_TIMESTEPS, encoder_hidden_states=text,
                           enable_diffusion_forcing=True, return_dict=False)[0]  # [B, 3, F, H, W]
        loss = velocity_loss(prediction, target, sigmas)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.step(model.parameters())
        step += 1
        losses["stills" if still else "video"].append(loss.item())
        bar.update(1)
        bar.set_postfix({loss_label(kind): f"{np.mean(values[-50:]):.4f}"
                         for kind, values in losses.items() if values})
        if step % config.save_every == 0 or step == config.optim.steps:
            save(model, ema, optimizer, generator, rng, step, losses, out)
    bar.close()
    summary = {"steps": step, "seconds": time.perf_counter() - started, **loss_summary(losses),
               "config": asdict(config)}
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


def save(model, ema, optimizer, generator, rng, step: int, losses: dict[str, list[float]], out: Path) -> None:
    """The EMA weights with save_pretrained (what generation loads) and the state to continue training."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "rng": rng.bit_generator.state, "step": step, "losses": losses},
               out / STATE_FILE)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.save_pretrained(out / "transformer")
    ema.restore(model.parameters())
