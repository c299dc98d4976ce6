"""`pavdm serve`: the official openai client end to end, live streaming, and requests meant to break it."""

import concurrent.futures
import io
import json
import shutil
import time

import av
import numpy as np
import openai
import pytest
import requests
from conftest import probe_mp4
from test_executors import frames_of

from benchmarks.cli_process import cli
from benchmarks.serve_process import API_KEY, Server
from training.world.probe import frame_changes, segment

FPS = 8
WINDOW = 4 * 3 / FPS  # seconds of video in the tiny model's window: N = 4 chunks of C = 3 frames


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve") / "runs"
    server = Server(root, ["pipeline.max_streams=4", "serve.max_queued=6", "serve.max_seconds=60",
                           "serve.max_live_seconds=60", "serve.max_prompt_changes_per_minute=1"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=API_KEY, base_url=f"{server.base}/v1", max_retries=0)


def decoded_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def poll(client, video):
    while video.status in ("queued", "in_progress"):
        time.sleep(0.3)
        video = client.videos.retrieve(video.id)
    return video


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openai_client_creates_downloads_extends_lists_and_deletes(client, server):
    video = client.videos.create(prompt="a red circle bouncing", seconds="4")
    assert video.status in ("queued", "in_progress") and video.size == "256x256" and video.model == "tiny"
    video = poll(client, video)
    assert video.status == "completed" and video.progress == 100 and video.seconds == "4"
    content = client.videos.download_content(video.id).read()
    assert decoded_frames(content) == 4 * FPS

    # the client uploads the video it extends; the service recognises its own video and continues it
    extended = poll(client, client.videos.extend(prompt="a green square bouncing", seconds="4",
                                                 video=("video.mp4", content, "video/mp4")))
    assert extended.status == "completed" and extended.seconds == "8"
    stitched = client.videos.download_content(extended.id).read()
    assert decoded_frames(stitched) == 8 * FPS
    # the same extension by reference (multipart video[id], as the API documents it)
    by_id = requests.post(f"{server.base}/v1/videos/extensions", headers=server.headers,
                          files={"prompt": (None, "a blue circle"), "seconds": (None, "2"),
                                 "video[id]": (None, video.id)})
    assert by_id.status_code == 200, by_id.text
    assert server.wait_status(by_id.json()["id"])["seconds"] == "6"

    listed = [v.id for v in client.videos.list(limit=2)]  # pages of two, newest first
    assert {video.id, extended.id, by_id.json()["id"]} <= set(listed)
    assert client.videos.delete(video.id).deleted
    assert video.id not in [v.id for v in client.videos.list()]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert decoded_frames(client.videos.download_content(extended.id).read()) == 8 * FPS  # independent


def test_stream_plays_before_the_video_is_complete(server):
    seconds = 20
    created = requests.post(f"{server.base}/v1/videos", headers=server.headers,
                            json={"prompt": "a yellow triangle bouncing", "seconds": seconds, "seed": 5}).json()
    received, status_when_playable = bytearray(), None
    with requests.get(f"{server.base}/v1/videos/{created['id']}/stream", headers=server.headers, stream=True,
                      timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
        for part in response.iter_content(chunk_size=None):
            received += part
            if status_when_playable is None and decoded_prefix_frames(bytes(received)) >= 16:
                status_when_playable = requests.get(f"{server.base}/v1/videos/{created['id']}",
                                                    headers=server.headers).json()["status"]
    assert status_when_playable == "in_progress"  # 2 s of decodable video before the end
    assert decoded_frames(bytes(received)) == seconds * FPS  # and the whole video once it completed
    assert "{}x{}".format(*probe_mp4(bytes(received))[1:3]) == created["size"] == "256x256"  # enlarged like the file
    assert server.wait_status(created["id"])["status"] == "completed"


def test_the_service_makes_in_process_the_video_of_the_ray_pipeline(server, tmp_path):
    """The service runs its one stage in its own process (the default executor); the video is the one
    `pavdm generate` makes on Ray with the same prompt, seed and length."""
    created = requests.post(f"{server.base}/v1/videos", headers=server.headers,
                            json={"prompt": "a blue square bouncing", "seconds": 2, "seed": 11}).json()
    assert server.wait_status(created["id"])["status"] == "completed"
    served = requests.get(f"{server.base}/v1/videos/{created['id']}/content", headers=server.headers).content
    (tmp_path / "served.mp4").write_bytes(served)
    on_ray = cli("generate", "--model", "tiny", "--quiet", "--prompt", "a blue square bouncing", "--seconds", "2",
                 "--seed", "11", "--out", "ray.mp4", "pipeline.executor=ray", "pipeline.num_cpus=0.5",
                 "metrics.port=0", cwd=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    made = [frames_of(tmp_path / name) for name in ("served.mp4", "ray.mp4")]
    assert made[0].shape[0] == 2 * FPS and np.array_equal(*made)


def decoded_prefix_frames(data: bytes) -> int:
    """Frames a player gets from a prefix of a fragmented MP4."""
    try:
        return decoded_frames(data)
    except (av.error.InvalidDataError, av.error.EOFError, ValueError):
        return 0


def test_bad_requests_get_clear_4xx_and_the_server_stays_healthy(server):
    url, auth = f"{server.base}/v1/videos", server.headers
    assert requests.get(url).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    cases = [
        (dict(data=b"{not json", headers={**auth, "Content-Type": "application/json"}), 400, "malformed JSON"),
        (dict(json={"prompt": "a red circle", "seconds": 0}), 400, "seconds"),
        (dict(json={"prompt": "a red circle", "seconds": "999"}), 400, "seconds"),
        (dict(json={"prompt": "a red circle", "seconds": "nan"}), 400, "seconds"),
        (dict(json={"prompt": "a red circle", "size": "1280x720"}), 400, "size"),
        (dict(json={"prompt": "a red circle", "model": "sora-2"}), 400, "model"),
        (dict(json={"prompt": ""}), 400, "prompt"),
        (dict(json=["a list"]), 400, "object"),
        (dict(json={"prompt": "x" * 2000}), 400, "prompt longer"),
        (dict(json={"prompt": "x" * 10_000_000}), 413, "larger than"),
        (dict(json={"prompt": "a red circle", "colour": "red"}), 400, "unsupported"),
        (dict(json={"prompt": "a red circle", "seed": -1}), 400, "seed must be a whole number in 0.."),
        (dict(json={"prompt": "a red circle", "seed": 1.9}), 400, "seed must be a whole number in 0.."),
        (dict(json={"prompt": "a red circle", "live": "maybe"}), 400, "live must be true or false"),
        (dict(json={"prompt": "a red circle", "live": True, "seconds": 4}), 400, "a live video has no seconds"),
    ]
    for kwargs, status, words in cases:
        kwargs["headers"] = kwargs.get("headers", auth)
        response = requests.post(url, timeout=60, **kwargs)
        assert response.status_code == status, (kwargs.get("json", "")[:80] if isinstance(kwargs.get("json"), str)
                                                else response.text)
        assert words in response.json()["error"]["message"]
    listing = requests.get(url, headers=auth, params={"limit": "abc"})
    assert listing.status_code == 400 and listing.json()["error"]["param"] == "limit"
    for bad in ["..%2F..%2Fetc%2Fpasswd", "../runs", "video_" + "0" * 32, "video_%2E%2E", "x" * 300]:
        for suffix in ("", "/content", "/stream"):
            assert requests.get(f"{url}/{bad}{suffix}", headers=auth).status_code == 404, bad
        assert requests.delete(f"{url}/{bad}", headers=auth).status_code in (404, 405), bad
    extension = requests.post(f"{url}/extensions", headers=auth, json={"prompt": "a", "seconds": 4,
                                                                       "video": {"id": "../../etc"}})
    assert extension.status_code == 404
    # a video this service made before its frame size changed (output.scale) cannot be continued in one file
    old = "video_" + "a" * 32
    (server.root / old).mkdir()
    (server.root / old / "video.json").write_text(json.dumps({
        "id": old, "created_at": 1, "prompt": "a red circle", "seconds": 4, "total_seconds": 4, "size": "32x32",
        "model": "tiny", "seed": 0, "completed_at": 2, "tenant": "default"}))  # the caller's: PAVDM_API_KEY's
    extension = requests.post(f"{url}/extensions", headers=auth, json={"prompt": "a", "seconds": 4,
                                                                       "video": {"id": old}})
    assert extension.status_code == 400 and "is 32x32" in extension.json()["error"]["message"]
    shutil.rmtree(server.root / old)
    assert requests.get(f"{server.base}/healthz").json()["status"] == "ok"


def test_requests_beyond_the_queue_get_429_and_all_accepted_complete(server):
    def create(i):
        return requests.post(f"{server.base}/v1/videos", headers=server.headers, timeout=60,
                             json={"prompt": f"a white square number {i}", "seconds": 1, "seed": i})

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(create, range(50)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and codes.count(429) > 0, codes
    assert all("queue is full" in r.json()["error"]["message"] for r in responses if r.status_code == 429)
    accepted = [r.json()["id"] for r in responses if r.status_code == 200]
    assert len(accepted) >= 6
    for video_id in accepted:
        assert server.wait_status(video_id)["status"] == "completed"
    metrics = requests.get(f"{server.base}/metrics").text
    assert f'pavdm_frames_emitted_total{{run_id="{accepted[0]}"}} 8.0' in metrics  # per-request series
    assert requests.get(f"{server.base}/healthz").json()["status"] == "ok"


def test_deleting_a_video_in_progress_frees_the_pipeline(server):
    url, auth = f"{server.base}/v1/videos", server.headers
    long = requests.post(url, headers=auth, json={"prompt": "a cyan square bouncing", "seconds": 40}).json()
    server.wait_status(long["id"], states=("in_progress",))
    assert requests.delete(f"{url}/{long['id']}", headers=auth).json()["deleted"]
    ratio = requests.post(url, headers=auth, json={"prompt": "16:9 a red circle bouncing", "seconds": 1}).json()
    assert server.wait_status(ratio["id"], timeout=120)["status"] == "completed"  # a prompt, not a schedule
    assert requests.get(f"{url}/{long['id']}", headers=auth).status_code == 404
    assert not (server.root / long["id"]).exists()


def wait_seconds(client, video, seconds: float, timeout: float = 300):
    """Poll a live video until `seconds` of it are made."""
    deadline = time.time() + timeout
    while float(video.seconds) < seconds:
        assert video.status == "in_progress" or float(video.seconds) == 0 and video.status == "queued", video
        assert time.time() < deadline, video
        time.sleep(0.2)
        video = client.videos.retrieve(video.id)
    return video


def model_frames(mp4: bytes) -> np.ndarray:
    """The frames of a tiny-model MP4 back at the model's size: [T, 32, 32, 3] (each 8x8 block averaged)."""
    with av.open(io.BytesIO(mp4)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    return frames.reshape(len(frames), 32, 8, 32, 8, 3).mean((2, 4)).round().astype(np.uint8)


def colour_presence(frames: np.ndarray, colour: str, start: float, end: float) -> float:
    """Fraction of the frames in [start, end) s in which the probe finds a blob of `colour`."""
    return float(np.mean([any(blob.colour == colour for blob in segment(frame))
                          for frame in frames[round(start * FPS) : round(end * FPS)]]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_live_video_follows_a_prompt_change_without_a_cut_and_stops_complete(client, server):
    video = client.videos.create(prompt="a red circle bouncing", extra_body={"live": True, "seed": 3})
    assert video.model_extra["live"] and video.seconds == "0"
    url = f"{server.base}/v1/videos/{video.id}"
    video = wait_seconds(client, video, 4)
    for body, status, words in [({"prompt": ""}, 400, "non-empty"), ({"prompt": "x" * 10_000_000}, 413, "larger"),
                                ({"prompt": "a green square", "transition_seconds": -1}, 400, "transition_seconds"),
                                ({"prompt": "a green square", "transition_seconds": "nan"}, 400, "transition_seconds"),
                                ({"prompt": "a green square", "colour": "green"}, 400, "unsupported")]:
        response = requests.post(f"{url}/prompt", headers=server.headers, json=body, timeout=60)
        assert response.status_code == status and words in response.json()["error"]["message"], response.text
    changed = requests.post(f"{url}/prompt", headers=server.headers, json={"prompt": "a green square bouncing"})
    assert changed.status_code == 200, changed.text
    schedule = changed.json()["prompt_schedule"]
    switch = schedule[-1]["seconds"]  # the start of the first chunk to enter after the change
    assert schedule == [{"seconds": 0, "prompt": "a red circle bouncing", "transition_seconds": 0},
                        {"seconds": switch, "prompt": "a green square bouncing", "transition_seconds": 0}]
    assert switch >= 4
    again = requests.post(f"{url}/prompt", headers=server.headers, json={"prompt": "a blue circle"})
    assert again.status_code == 429 and again.headers["retry-after"]  # serve.max_prompt_changes_per_minute=1

    wait_seconds(client, video, 12)
    assert requests.post(f"{url}/stop", headers=server.headers).status_code == 200
    assert requests.post(f"{url}/stop", headers=server.headers).status_code == 409
    assert requests.post(f"{url}/prompt", headers=server.headers, json={"prompt": "a blue circle"}).status_code == 409
    video = poll(client, video)
    assert video.status == "completed" and video.model_extra["prompt_schedule"] == schedule
    seconds = float(video.seconds)
    assert 12 <= seconds <= 60 and (seconds * FPS) % 3 == 0  # whole chunks: the last one that entered, not torn
    frames = model_frames(client.videos.download_content(video.id).read())
    assert len(frames) == seconds * FPS
    before, after = (0, switch - WINDOW), (switch + WINDOW, seconds)
    assert colour_presence(frames, "red", *before) > 0.8 and colour_presence(frames, "green", *before) < 0.2
    assert colour_presence(frames, "green", *after) > 0.8 and colour_presence(frames, "red", *after) < 0.2
    # no cut: the largest frame-to-frame change around the switch stays within the video's usual range and below the
    # jump a cut from the red video to the green one would make
    changes = frame_changes(frames)  # [T-1]: frame t to t + 1
    around = slice(round((switch - WINDOW) * FPS), round((switch + WINDOW) * FPS))
    elsewhere = np.concatenate([changes[: around.start], changes[around.stop :]])
    red, green = frames[around.start - 1].astype(np.float32), frames[around.stop + 1].astype(np.float32)
    assert changes[around].max() < min(1.25 * elsewhere.max(), np.abs(green - red).mean())
    metrics = requests.get(f"{server.base}/metrics").text
    assert f'pavdm_prompt_changes_total{{run_id="{video.id}"}} 1.0' in metrics
    assert f'pavdm_live_seconds{{run_id="{video.id}"}} {seconds}' in metrics
    assert requests.get(f"{server.base}/healthz").json()["status"] == "ok"


def test_steering_a_video_that_is_not_in_progress_is_refused(server):
    url, auth = f"{server.base}/v1/videos", server.headers
    made = {"created_at": 1, "prompt": "a red circle", "seconds": 4, "total_seconds": 4, "size": "256x256",
            "model": "tiny", "seed": 0, "tenant": "default"}  # the caller's: PAVDM_API_KEY's
    records = {"video_" + "c" * 32: {"completed_at": 2}, "video_" + "f" * 32: {"error": "generation failed"}}
    for video_id, ending in records.items():  # a completed and a failed video, as a restart finds them
        (server.root / video_id).mkdir()
        (server.root / video_id / "video.json").write_text(json.dumps({"id": video_id, **made, **ending}))
    for video_id, state in zip(records, ("completed", "failed"), strict=True):
        for route, body in (("prompt", {"prompt": "a green square"}), ("stop", None)):
            response = requests.post(f"{url}/{video_id}/{route}", headers=auth, json=body)
            assert response.status_code == 409 and f"is {state}" in response.json()["error"]["message"], route
        shutil.rmtree(server.root / video_id)
    for unknown in ("video_" + "0" * 32, "video_%2E%2E"):
        for route in ("prompt", "stop"):
            assert requests.post(f"{url}/{unknown}/{route}", headers=auth, json={"prompt": "a"}).status_code == 404
    assert requests.get(f"{server.base}/healthz").json()["status"] == "ok"
