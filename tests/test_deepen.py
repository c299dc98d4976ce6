"""Deepening a trained transformer: identity blocks between the old ones, the same output, then fine-tuning."""

import pytest
import torch

from orchestrator.core.errors import UserError
from tests.tiny_models import MINILM_DIM, fine_tuned_transformer, tiny_transformer, window_velocity
from training.recipe.config import ArchitectureConfig
from training.recipe.deepen import check_architecture, deepen, new_block_positions


def test_new_blocks_are_spread_between_the_old():
    assert new_block_positions(4, 6) == [2, 5]
    assert new_block_positions(4, 8) == [1, 3, 5, 7]
    assert new_block_positions(1, 3) == [0, 2]
    for old, new in [(1, 5), (2, 3), (3, 10)]:
        positions = new_block_positions(old, new)
        assert len(set(positions)) == new - old and all(0 <= p < new for p in positions)


def test_deepened_model_computes_the_same_function_and_keeps_the_old_blocks():
    model = tiny_transformer(3, MINILM_DIM).eval()
    deeper = deepen(model, 5).eval()
    assert deeper.config.num_layers == 5
    kept = [i for i in range(5) if i not in new_block_positions(2, 5)]
    for old, new in enumerate(kept):
        for (name, a), b in zip(model.blocks[old].state_dict().items(), deeper.blocks[new].state_dict().values(),
                                strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    before, after = window_velocity(model), window_velocity(deeper)
    torch.testing.assert_close(after, before)
    assert before.abs().max() > 0
    assert deepen(model, 2) is model


def test_a_fine_tuned_model_keeps_its_patch_and_may_only_grow_or_regroup_its_heads():
    loaded = tiny_transformer(3, MINILM_DIM).config  # patch 2, 2 heads of 8, ffn 32, 2 layers
    check_architecture(loaded, ArchitectureConfig(patch=2, heads=2, head_dim=8, ffn_dim=32, layers=3))
    assert check_architecture(loaded, ArchitectureConfig(patch=2, heads=4, head_dim=8, ffn_dim=64, layers=2)) == 2
    with pytest.raises(UserError, match="same whole multiple"):
        check_architecture(loaded, ArchitectureConfig(patch=2, heads=4, head_dim=8, ffn_dim=32, layers=2))
    with pytest.raises(UserError, match="same whole multiple"):
        check_architecture(loaded, ArchitectureConfig(patch=2, heads=3, head_dim=8, ffn_dim=48, layers=2))
    assert check_architecture(loaded, ArchitectureConfig(patch=2, heads=1, head_dim=16, ffn_dim=32, layers=2)) == 1
    with pytest.raises(UserError, match="heads \\* head_dim = 16"):
        check_architecture(loaded, ArchitectureConfig(patch=2, heads=2, head_dim=16, ffn_dim=32, layers=2))
    with pytest.raises(UserError, match="architecture.patch=2"):
        check_architecture(loaded, ArchitectureConfig(patch=4, heads=2, head_dim=8, ffn_dim=32, layers=2))
    with pytest.raises(UserError, match="only be deepened"):
        check_architecture(loaded, ArchitectureConfig(patch=2, heads=2, head_dim=8, ffn_dim=32, layers=1))


def test_training_from_a_saved_model_deepens_it(tmp_path):
    assert fine_tuned_transformer(tmp_path, heads=2, head_dim=8, ffn_dim=32, layers=4).config.num_layers == 4
