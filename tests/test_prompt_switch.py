"""The shipped model follows a prompt schedule: what the probe finds changes with the prompt."""

import numpy as np
import pytest

from actors.backends.factory import build_backend
from orchestrator.config import load_config
from training.evaluate import render_frames
from training.probe import score_video
from training.world import parse_caption

BEFORE, AFTER, SWITCH, FPS = "a red circle", "a green square", 20.0, 8.0


def render(seed: int, prompts: list[str]) -> np.ndarray:
    config = load_config([], [f"seed={seed}", "seconds=40"], model="tiny")
    config.prompts = prompts
    return render_frames(config, build_backend(config.model))


def presence(frames: np.ndarray, caption: str, start: float, end: float) -> float:
    segments = score_video(frames, parse_caption(caption), FPS)
    return float(np.mean([s["presence"] for s in segments if s["start"] >= start and s["end"] <= end]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prompt_switch_changes_content(seed):
    schedule = [f"0:{BEFORE}", f"{SWITCH:g}:{AFTER}"]
    frames = render(seed, schedule)  # [320, 32, 32, 3]
    assert presence(frames, BEFORE, 0, SWITCH) > presence(frames, BEFORE, SWITCH + 4, 40)
    assert presence(frames, AFTER, SWITCH + 4, 40) > presence(frames, AFTER, 0, SWITCH)
