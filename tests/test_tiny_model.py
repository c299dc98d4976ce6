"""The shipped model loads offline from the package and makes videos of the requested size, enlarged 8x."""

from conftest import probe_mp4

from orchestrator.cli import main


def test_shipped_model_loads_offline_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "tiny.mp4"
    assert main(["generate", "--quiet", "--seconds", "3", "--out", str(out), "pipeline.stages=0"]) == 0
    assert probe_mp4(out) == (24, 256, 256, "h264")  # 32x32 frames, each pixel an 8x8 block
