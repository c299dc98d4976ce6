"""The shipped model loads offline from the package, makes videos of the requested size, enlarged 8x, and draws the
default prompt's shape."""

import numpy as np
from conftest import probe_mp4

from actors.backends.factory import build_backend
from orchestrator.core.prompts import PromptSchedule
from orchestrator.entry.cli import main
from orchestrator.state.settings import load_config
from training.evaluation.videos import render_frames, world_scenes
from training.world.probe import score_video


def test_shipped_model_loads_offline_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "tiny.mp4"
    assert main(["generate", "--quiet", "--seconds", "3", "--out", str(out), "pipeline.stages=0"]) == 0
    assert probe_mp4(out) == (24, 256, 256, "h264")  # 32x32 frames, each pixel an 8x8 block


def test_shipped_model_draws_the_default_prompt_in_its_shape():
    """The default prompt, the one `make demo` renders, comes out as its shape and not only its colour: the
    probe's presence needs the object's outline (a magenta blob is not a magenta square)."""
    config = load_config([], ["seconds=6"], model="tiny")
    prompt = PromptSchedule.parse(config.prompts).at(0.0)
    frames = render_frames(config, build_backend(config.model))  # [48, 32, 32, 3]
    segments = score_video(frames, world_scenes([prompt])[prompt], config.fps)
    assert np.mean([segment["presence"] for segment in segments]) > 0.3
