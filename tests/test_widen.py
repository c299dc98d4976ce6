"""Widening a trained transformer: every head and channel copied, the same output, then fine-tuning apart."""

import torch

from tests.tiny_models import MINILM_DIM, fine_tuned_transformer, tiny_transformer, window_velocity
from training.recipe.widen import widen


def test_widened_model_computes_the_same_function():
    model = tiny_transformer(3, MINILM_DIM).eval()  # 2 heads, ffn 32
    wider = widen(model, 3, torch.Generator().manual_seed(0), noise=0.0).eval()
    assert (wider.config.num_attention_heads, wider.config.ffn_dim) == (6, 96)
    before = window_velocity(model)
    torch.testing.assert_close(window_velocity(wider), before, atol=1e-5, rtol=1e-4)
    assert before.abs().max() > 0
    assert widen(model, 1, torch.Generator()) is model


def test_copies_are_nudged_apart_and_the_output_barely_moves():
    model = tiny_transformer(3, MINILM_DIM).eval()
    wider = widen(model, 2, torch.Generator().manual_seed(0)).eval()
    first, second = wider.blocks[0].attn1.to_q.weight.chunk(2)  # the two copies of every head's query rows
    assert not torch.equal(first, second)
    before = window_velocity(model)
    assert ((window_velocity(wider) - before).norm() / before.norm()) < 0.05


def test_training_from_a_saved_model_widens_it(tmp_path):
    model = fine_tuned_transformer(tmp_path, heads=4, head_dim=8, ffn_dim=64, layers=3)
    assert (model.config.num_attention_heads, model.config.ffn_dim, model.config.num_layers) == (4, 64, 3)
