"""Regrouping a trained transformer's heads into fewer, larger ones: queries and keys reordered alike, the rotary
axes kept where they fit, everything else carried over."""

import torch

from tests.tiny_models import MINILM_DIM, fine_tuned_transformer, tiny_transformer, window_velocity
from training.recipe.regroup import group_order, regroup, rope_pairs


def test_rope_pairs_follow_the_transformers_rotary_code():
    from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2RotaryPosEmbed

    for head_dim in (8, 16, 32):
        rope = SkyReelsV2RotaryPosEmbed(head_dim, (1, 2, 2), 16)
        pairs = rope_pairs(head_dim)
        axes = [0] * (rope.t_dim // 2) + [1] * (rope.h_dim // 2) + [2] * (rope.w_dim // 2)
        assert [axis for axis, _ in pairs] == axes
        turned = torch.acos(rope.freqs_cos[1, ::2].float())  # position 1: each pair turned by its frequency
        torch.testing.assert_close(turned, torch.tensor([freq for _, freq in pairs]), atol=1e-4, rtol=1e-3)


def test_group_order_is_a_permutation_of_whole_pairs_that_keeps_each_axis_where_it_fits():
    old, new = rope_pairs(16), rope_pairs(32)  # 16: time 4 pairs, height 2, width 2; 32: time 6, height 5, width 5
    order = group_order(16, 32)
    assert sorted(order) == list(range(32))
    sources = [order[2 * slot] for slot in range(len(new))]
    assert all(source % 2 == 0 for source in sources)
    assert [order[2 * slot + 1] for slot in range(len(new))] == [s + 1 for s in sources]
    source_axis = [old[(s % 16) // 2][0] for s in sources]
    new_axis = [axis for axis, _ in new]
    assert source_axis.count(1) == source_axis.count(2) == 4  # both heads' height and width pairs ...
    assert all(new_axis[slot] == axis for slot, axis in enumerate(source_axis) if axis > 0)  # ... on their axis
    assert [new_axis[slot] for slot, axis in enumerate(source_axis) if axis == 0].count(0) == 6  # time slots full
    time_sources = [old[(s % 16) // 2][1] for s, axis in zip(sources, new_axis, strict=True) if axis == 0]
    assert time_sources == sorted(time_sources, reverse=True)  # highest frequencies first


def _attention_scores(model, heads: int) -> torch.Tensor:
    """Unrotated self-attention scores [heads, T, T] of the first block on fixed random tokens."""
    attn = model.blocks[0].attn1
    tokens = torch.randn(7, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))  # [T, W]
    with torch.no_grad():
        q, k = attn.norm_q(attn.to_q(tokens)), attn.norm_k(attn.to_k(tokens))  # [T, W]
    q, k = q.unflatten(1, (heads, -1)), k.unflatten(1, (heads, -1))  # [T, heads, d]
    return torch.einsum("thd,shd->hts", q, k)


def test_merged_heads_score_the_sum_of_their_old_heads_and_the_rest_is_kept():
    model = tiny_transformer(3, MINILM_DIM).eval()  # 2 heads of 8
    merged = regroup(model, 16).eval()
    assert (merged.config.num_attention_heads, merged.config.attention_head_dim) == (1, 16)
    torch.testing.assert_close(_attention_scores(merged, 1)[0], _attention_scores(model, 2).sum(0))
    old, new = model.state_dict(), merged.state_dict()
    moved = {name for name in old if not torch.equal(old[name], new[name])}
    assert moved and all(".attn1." in name and name.split(".")[-2] in ("to_q", "to_k", "norm_q", "norm_k")
                         for name in moved)
    assert torch.isfinite(window_velocity(merged)).all()
    assert regroup(model, 8) is model


def test_training_from_a_saved_model_regroups_its_heads(tmp_path):
    model = fine_tuned_transformer(tmp_path, heads=1, head_dim=16, ffn_dim=32, layers=3)
    assert (model.config.num_attention_heads, model.config.attention_head_dim, model.config.num_layers) == (1, 16, 3)
