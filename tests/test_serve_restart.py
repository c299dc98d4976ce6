"""Stopping `pavdm serve` while a live video runs, after a prompt change (with a transition), and starting it again:
the video continues with the change, and equals what `pavdm generate` makes of the schedule it recorded."""

import os
import time

import pyarrow as pa
import requests

from benchmarks.cli_process import cli
from benchmarks.serve_process import Server
from orchestrator.core.config import from_yaml


def latents(path):
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def wait_seconds(server, video_id, seconds: float, timeout: float = 180) -> dict:
    """Poll a live video until `seconds` of it are made."""
    deadline = time.time() + timeout
    while float((video := requests.get(f"{server.base}/v1/videos/{video_id}", headers=server.headers).json())
                ["seconds"]) < seconds:
        assert time.time() < deadline and video["status"] in ("queued", "in_progress"), video
        time.sleep(0.2)
    return video


def test_restart_continues_a_live_video_with_its_prompt_change(tmp_path):
    root = tmp_path / "runs"
    overrides = ["checkpoint.every_shifts=2", "checkpoint.every_seconds=0"]
    server = Server(root, overrides)
    try:
        video_id = requests.post(f"{server.base}/v1/videos", headers=server.headers,
                                 json={"prompt": "a magenta circle bouncing", "live": True, "seed": 11}).json()["id"]
        wait_seconds(server, video_id, 1)
        changed = requests.post(f"{server.base}/v1/videos/{video_id}/prompt", headers=server.headers,
                                json={"prompt": "a yellow square bouncing", "transition_seconds": 1})
        assert changed.status_code == 200, changed.text
        schedule = changed.json()["prompt_schedule"]
        assert [entry["transition_seconds"] for entry in schedule] == [0, 1]
        made_before = float(wait_seconds(server, video_id, 2)["seconds"])
    finally:
        server.stop()
    assert (root / video_id / "checkpoints").is_dir() and not (root / video_id / "content.mp4").exists()

    server = Server(root, overrides)
    try:
        video = wait_seconds(server, video_id, made_before + 1)  # it continues, still live, with its change
        assert video["live"] and video["prompt_schedule"] == schedule
        assert requests.post(f"{server.base}/v1/videos/{video_id}/stop", headers=server.headers).status_code == 200
        video = server.wait_status(video_id)
        assert video["status"] == "completed" and video["prompt_schedule"] == schedule
    finally:
        server.stop()

    recorded = from_yaml((root / video_id / "config.yaml").read_text())
    assert len(recorded.prompts) == 2 and float(video["seconds"]) == recorded.seconds
    made = cli("generate", *(f"--prompt={entry}" for entry in recorded.prompts), "--seconds", repr(recorded.seconds),
               "--seed", "11", "--out", "again.mp4", "--latents-out", "again.arrow", "pipeline.stages=0", "--quiet",
               cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})  # the stage's one torch thread
    assert made.returncode == 0, made.stderr
    assert latents(root / video_id / "latents_all.arrow").equals(latents(tmp_path / "again.arrow"))
