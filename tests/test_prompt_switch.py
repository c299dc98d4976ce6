"""The shipped model follows a prompt schedule: what the probe finds changes with the prompt, without a cut.

Content is read by colour: the model draws each prompted colour far more reliably than its outline (EVALUATION.md,
presence per prompt), so reading by colour tests the switch itself, not how well each outline is drawn."""

from functools import cache

import numpy as np
import pytest
import torch

from actors.backends.factory import build_backend
from orchestrator.state.settings import load_config
from training.evaluation.videos import render_frames
from training.world.probe import frame_changes, segment
from training.world.scenes import parse_caption

BEFORE, AFTER, SWITCH, FPS = "a red circle", "a green square", 10.0, 8.0
LENGTH = 2 * SWITCH
SEEDS = [0, 1]


@pytest.fixture(autouse=True, scope="module")
def both_cores():
    """These videos are made in this process: torch may use both cores (conftest sets one for the Ray tests)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def render(seed: int, prompts: list[str], seconds: float = LENGTH) -> np.ndarray:
    config = load_config([], [f"seed={seed}", f"seconds={seconds:g}"], model="tiny")
    config.prompts = prompts
    return render_frames(config, build_backend(config.model))


@cache
def switched(seed: int) -> np.ndarray:
    """The 20-second video whose prompt switches at 10 s, made once per seed for both tests: [160, 32, 32, 3]."""
    return render(seed, [f"0:{BEFORE}", f"{SWITCH:g}:{AFTER}"])


def colour_presence(frames: np.ndarray, colour: str, start: float, end: float) -> float:
    """Fraction of the frames in [start, end) s that hold a blob of `colour`."""
    window = frames[int(start * FPS) : int(end * FPS)]  # [t, H, W, 3]
    return float(np.mean([any(blob.colour == colour for blob in segment(frame)) for frame in window]))


@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_switch_changes_content(seed):
    frames = switched(seed)  # [160, 32, 32, 3]
    red, green = (parse_caption(caption).objects[0].colour for caption in (BEFORE, AFTER))
    assert colour_presence(frames, red, 0, SWITCH) > colour_presence(frames, red, SWITCH + 4, LENGTH) + 0.5
    assert colour_presence(frames, green, SWITCH + 4, LENGTH) > colour_presence(frames, green, 0, SWITCH) + 0.5


def largest_change(frames: np.ndarray, start: float, end: float) -> float:
    """The largest mean absolute change between consecutive frames in [start, end) s over the video's median one."""
    change = frame_changes(frames)  # [T-1]: frame t to t+1
    return float(change[int(start * FPS) : int(end * FPS)].max() / np.median(change))


@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_switch_is_not_a_cut(seed):
    """Around the switch the video changes less than at a hard cut from the first prompt's video to the second's."""
    cut_at = int(SWITCH * FPS)
    window = (SWITCH - 1, SWITCH + 3)
    before = render(seed, [BEFORE], SWITCH)  # [80, 32, 32, 3]
    after = render(seed + 10, [AFTER], window[1] + 1)  # [112, 32, 32, 3]
    spliced = np.concatenate([before, after[cut_at:]])  # one hard cut, between frames cut_at - 1 and cut_at
    assert largest_change(switched(seed), *window) < largest_change(spliced, *window)
