"""The benchmark model: a randomly initialised SkyReels-V2 transformer of the embedded model's kind, smaller."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from orchestrator.core.config import Config, ModelConfig

MINILM_DIM = 384


def save_bench_model(folder: Path) -> Path:
    """Pixel-space, 32x32, patch 4x4: 64 tokens per frame, 4 layers of width 64; MiniLM text."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    model = SkyReelsV2Transformer3DModel(
        patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=16, in_channels=3, out_channels=3,
        text_dim=MINILM_DIM, freq_dim=64, ffn_dim=256, num_layers=4, rope_max_seq_len=256,
    )
    model.save_pretrained(folder / "transformer")
    return folder


def bench_config(folder: Path, seconds: float, fps: float = 8.0) -> Config:
    config = Config(seconds=seconds, fps=fps, prompts=["0:a red circle and a blue square bouncing"])
    config.model = ModelConfig(backend="diffusers", path=str(folder), height=32, width=32, text_encoder="minilm")
    return config


def temp_bench_model() -> Path:
    return save_bench_model(Path(tempfile.mkdtemp(prefix="pavdm-bench-")))
