"""Stopping `pavdm serve` mid-video and starting it again: the video completes, the same as uninterrupted."""

import time

import pyarrow as pa
import requests

from benchmarks.serve_process import Server


def latents(root, video_id):
    with pa.memory_map(str(root / video_id / "latents_all.arrow")) as source:
        return pa.ipc.open_file(source).read_all()


def test_restart_resumes_a_video_in_progress(tmp_path):
    root = tmp_path / "runs"
    overrides = ["checkpoint.every_shifts=2", "checkpoint.every_seconds=0"]
    request = {"prompt": "a magenta circle bouncing", "seconds": 12, "seed": 11}
    server = Server(root, overrides)
    try:
        video_id = requests.post(f"{server.base}/v1/videos", headers=server.headers, json=request).json()["id"]
        deadline = time.time() + 120
        while requests.get(f"{server.base}/v1/videos/{video_id}", headers=server.headers).json()["progress"] < 30:
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        server.stop()
    assert (root / video_id / "checkpoints").is_dir() and not (root / video_id / "content.mp4").exists()

    server = Server(root, overrides)
    try:
        resumed = server.wait_status(video_id)
        assert resumed["status"] == "completed", resumed
        again = requests.post(f"{server.base}/v1/videos", headers=server.headers, json=request).json()["id"]
        assert server.wait_status(again)["status"] == "completed"
        content = requests.get(f"{server.base}/v1/videos/{video_id}/content", headers=server.headers)
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    finally:
        server.stop()
    assert latents(root, video_id).equals(latents(root, again))  # the same video as an uninterrupted one
