"""Tenants of `pavdm serve`: isolation on every route, keys that rotate, quotas, fair turns, audit, a clean stop."""

import concurrent.futures
import json
import signal
import time

import openai
import pytest
import requests
from conftest import probe_mp4

from benchmarks.serve_process import Server
from orchestrator.core.errors import UserError
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.entry.cli import main
from orchestrator.entry.serving.tenants import Tenants, check_exposure, key_hash
from orchestrator.state.outputs import read_latents

KEYS = {"alpha": "alpha-key-0001", "beta": "beta-key-0002", "gamma": "gamma-key-0003"}
GAUSSIAN = ["model.height=8", "model.width=8", "schedule.chunk=2", "schedule.noisy_chunks=2", "schedule.steps=2"]


def write_keys(path, tenants: dict[str, dict]) -> None:
    path.write_text(json.dumps({"tenants": tenants}))  # JSON is YAML


def entry(name: str, **quotas) -> dict:
    return {"key_sha256": key_hash(KEYS[name]), **quotas}


# --- without a server ---------------------------------------------------------------------------------------------

def test_keys_file_identifies_tenants_and_rereads_changes(tmp_path):
    keys = tmp_path / "keys.yaml"
    write_keys(keys, {"alpha": entry("alpha", max_videos=2)})
    tenants = Tenants(str(keys), env_key="", refresh=0.0)
    assert tenants.identify(f"Bearer {KEYS['alpha']}").name == "alpha"
    assert tenants.identify(f"Bearer {KEYS['beta']}") is None and tenants.identify("") is None
    write_keys(keys, {"beta": entry("beta")})
    assert tenants.identify(f"Bearer {KEYS['alpha']}") is None
    assert tenants.identify(f"Bearer {KEYS['beta']}").name == "beta"
    keys.write_text("tenants: [not, a, mapping")  # a broken edit keeps the last good keys
    assert tenants.identify(f"Bearer {KEYS['beta']}").name == "beta"
    assert Tenants("", env_key="k").identify("Bearer k").name == "default"
    assert Tenants("", env_key="").identify("").name == "anonymous"


def test_an_open_server_on_a_non_loopback_address_is_refused(tmp_path, capsys):
    open_server = Tenants("", env_key="")
    with pytest.raises(UserError, match="refusing to listen on 0.0.0.0 with no API key"):
        check_exposure("0.0.0.0", open_server, allow_unauthenticated=False)
    assert "--allow-unauthenticated" in check_exposure("0.0.0.0", open_server, allow_unauthenticated=True)
    assert check_exposure("127.0.0.1", open_server, False) == check_exposure("::1", open_server, False) == ""
    assert check_exposure("0.0.0.0", Tenants("", env_key="k"), False) == ""
    assert main(["serve", "--host", "0.0.0.0", "--root", str(tmp_path / "runs")]) == 2  # before Ray or a socket
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to listen on 0.0.0.0" in err


def test_the_queue_takes_owners_in_turn(tmp_path):
    queue = JobQueue()
    jobs = [StreamJob(None, None, owner="gamma") for _ in range(50)] + [StreamJob(None, None, owner="beta")]
    for job in jobs:
        queue.put(job)
    first, second = queue.take(1, 0), queue.take(1, 0)
    assert [first[0].owner, second[0].owner] == ["gamma", "beta"]  # beta's turn comes at the next free slot


# --- one server, three tenants ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    write_keys(path, {"alpha": entry("alpha", max_videos=2, max_video_seconds_per_hour=6), "beta": entry("beta")})
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys_file):
    root = tmp_path_factory.mktemp("tenants") / "runs"
    server = Server(root, [f"serve.keys_file={keys_file}", "pipeline.max_streams=1", "serve.max_queued=60",
                           *GAUSSIAN], api_key=None, model="gaussian")
    yield server
    server.stop()


def client(server, name: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEYS[name], base_url=f"{server.base}/v1", max_retries=0)


def auth(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def wait_done(server, name: str, video_id: str) -> dict:
    server.headers = auth(name)
    return server.wait_status(video_id, timeout=120)


def test_each_tenant_sees_only_its_own_videos_on_every_route(server):
    alpha, beta = client(server, "alpha"), client(server, "beta")
    mine = alpha.videos.create(prompt="a red circle", seconds="1")
    theirs = beta.videos.create(prompt="a blue square", seconds="1")
    assert wait_done(server, "alpha", mine.id)["status"] == "completed"
    assert wait_done(server, "beta", theirs.id)["status"] == "completed"
    url = f"{server.base}/v1/videos"
    for name, own, other in (("alpha", mine.id, theirs.id), ("beta", theirs.id, mine.id)):
        listed = requests.get(url, headers=auth(name)).json()["data"]
        assert [video["id"] for video in listed] == [own]
        for suffix in ("", "/content", "/stream"):
            assert requests.get(f"{url}/{own}{suffix}", headers=auth(name)).status_code == 200
            answer = requests.get(f"{url}/{other}{suffix}", headers=auth(name))
            unknown = requests.get(f"{url}/video_{'0' * 32}{suffix}", headers=auth(name))
            assert answer.status_code == unknown.status_code == 404 and answer.json() == unknown.json()
        assert requests.post(f"{url}/extensions", headers=auth(name), json={
            "prompt": "more", "seconds": 1, "video": {"id": other}}).status_code == 404
        assert requests.delete(f"{url}/{other}", headers=auth(name)).status_code == 404
    uploaded = requests.get(f"{url}/{theirs.id}/content", headers=auth("beta")).content
    with pytest.raises(openai.BadRequestError, match="not one made by this service"):
        alpha.videos.extend(prompt="more", seconds="1", video=("v.mp4", uploaded, "video/mp4"))
    assert requests.get(f"{url}/{theirs.id}", headers=auth("beta")).status_code == 200  # still there
    assert requests.get(url).status_code == requests.get(url, headers=auth("gamma")).status_code == 401


def test_keys_added_and_removed_take_effect_without_a_restart(server, keys_file):
    url = f"{server.base}/v1/videos"
    assert requests.get(url, headers=auth("gamma")).status_code == 401
    before = keys_file.read_text()
    tenants = json.loads(before)["tenants"]
    write_keys(keys_file, {**tenants, "gamma": entry("gamma")})
    deadline = time.time() + 10
    while requests.get(url, headers=auth("gamma")).status_code != 200:
        assert time.time() < deadline, "an added key did not take effect within 10 s"
        time.sleep(0.3)
    without_beta = {name: value for name, value in tenants.items() if name != "beta"}
    write_keys(keys_file, without_beta | {"gamma": entry("gamma")})
    while requests.get(url, headers=auth("beta")).status_code != 401:
        assert time.time() < deadline + 10, "a removed key still worked after 10 s"
        time.sleep(0.3)
    keys_file.write_text(before)
    time.sleep(1.5)


def test_quotas_answer_429_with_retry_after_and_a_flood_does_not_starve_others(server, keys_file):
    url = f"{server.base}/v1/videos"
    # alpha: at most 2 videos at once and 6 video-seconds an hour (the isolation test used 1). A long video of
    # beta's holds the one slot, so that neither of alpha's first two can end before the third is asked for.
    holder = requests.post(url, headers=auth("beta"), json={"prompt": "b", "seconds": 120}).json()["id"]
    first = [requests.post(url, headers=auth("alpha"), json={"prompt": "a", "seconds": 1}) for _ in range(2)]
    assert [answer.status_code for answer in first] == [200, 200]
    over = requests.post(url, headers=auth("alpha"), json={"prompt": "a", "seconds": 1})
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert requests.post(url, headers=auth("beta"), json={"prompt": "b", "seconds": 1}).status_code == 200
    assert requests.delete(f"{url}/{holder}", headers=auth("beta")).status_code == 200
    for answer in first:
        wait_done(server, "alpha", answer.json()["id"])
    hourly = requests.post(url, headers=auth("alpha"), json={"prompt": "a", "seconds": 4})
    assert hourly.status_code == 429 and "video-seconds per hour" in hourly.json()["error"]["message"]
    assert int(hourly.headers["Retry-After"]) > 60

    # gamma floods the one slot with 50 concurrent requests; beta's video is the next to start after the one running
    write_keys(keys_file, {**json.loads(keys_file.read_text())["tenants"], "gamma": entry("gamma")})
    time.sleep(1.5)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        flood = list(pool.map(lambda _: requests.post(url, headers=auth("gamma"), json={"prompt": "g", "seconds": 1}),
                              range(50)))
    assert all(answer.status_code == 200 for answer in flood)
    asked = time.time()
    beta = requests.post(url, headers=auth("beta"), json={"prompt": "b", "seconds": 1}).json()["id"]
    wait_done(server, "beta", beta)
    started = {video_id: json.loads((server.root / video_id / "status.json").read_text())["started"]
               for video_id in [beta] + [answer.json()["id"] for answer in flood]
               if (server.root / video_id / "status.json").exists()}
    assert len(started) < 51, "gamma's flood had all started before beta asked: the test proves nothing"
    overtaken = [video_id for video_id, when in started.items() if asked < when < started[beta]]
    assert len(overtaken) <= 1, f"{len(overtaken)} of gamma's videos started after beta asked and before beta's"
    for answer in flood:
        requests.delete(f"{url}/{answer.json()['id']}", headers=auth("gamma"))


def test_every_request_is_audited_and_no_key_is_logged(server):
    lines = [json.loads(line) for line in (server.root / "audit.log").read_text().splitlines()]
    assert {line["tenant"] for line in lines} >= {"alpha", "beta", "gamma", ""}
    assert all(set(line) == {"time", "tenant", "method", "route", "status", "video_id"} for line in lines)
    created = [line for line in lines if line["method"] == "POST" and line["status"] == 200]
    assert created and all(line["video_id"].startswith("video_") for line in created)
    logs = (server.root / "audit.log").read_text() + server.output()
    for key in KEYS.values():
        assert key not in logs and key_hash(key) not in logs
    metrics = requests.get(f"{server.base}/metrics").text
    assert 'pavdm_api_requests_total{route="/v1/videos",status="429",tenant="alpha"}' in metrics


# --- a clean stop ---------------------------------------------------------------------------------------------

# Long enough to be still in progress at the signal on a fast machine: the tiny oracle makes ~700 frames a second.
SIGTERM_SECONDS = 300


def test_sigterm_checkpoints_the_videos_in_progress_and_a_restart_finishes_them(tmp_path):
    root = tmp_path / "runs"
    overrides = [*GAUSSIAN, "pipeline.max_streams=2", "checkpoint.every_shifts=1000", "checkpoint.every_seconds=0",
                 "serve.grace_seconds=30", f"serve.max_seconds={SIGTERM_SECONDS}"]
    server = Server(root, overrides, model="gaussian")
    url = f"{server.base}/v1/videos"
    body = {"seconds": SIGTERM_SECONDS}
    ids = [requests.post(url, headers=server.headers, json={**body, "prompt": p, "seed": seed}).json()["id"]
           for p, seed in (("a red circle", 1), ("a blue square", 2))]
    deadline = time.time() + 60
    while not all(requests.get(f"{url}/{i}", headers=server.headers).json()["progress"] > 0 for i in ids):
        assert time.time() < deadline
        time.sleep(0.05)
    stopped = time.time()
    code = server.stop(signal.SIGTERM, timeout=60)
    output = server.output()
    assert code == 0 and time.time() - stopped < 30, output
    assert "*** SIGTERM" not in output and "Traceback" not in output and "Stack trace" not in output, output
    saved = [line for line in output.splitlines() if line.startswith("pavdm: saved video_")]
    assert sorted(line.split()[2] for line in saved) == sorted(ids), output
    for video_id in ids:
        assert json.loads((root / video_id / "status.json").read_text())["frames_written"] > 0

    again = Server(root, overrides, model="gaussian")
    try:
        for video_id in ids:
            assert again.wait_status(video_id, timeout=180)["status"] == "completed"
    finally:
        again.stop()
    for video_id, (prompt, seed) in zip(ids, (("a red circle", 1), ("a blue square", 2)), strict=True):
        alone = tmp_path / f"{seed}.arrow"
        assert main(["generate", "--model", "gaussian", "--quiet", *GAUSSIAN, "pipeline.stages=0", "--prompt",
                     f"0:{prompt}", "--seconds", str(SIGTERM_SECONDS), "--seed", str(seed), "--latents-out",
                     str(alone), "--out", str(tmp_path / f"{seed}.mp4")]) == 0
        assert read_latents(root / video_id / "latents_all.arrow").equal(read_latents(alone))
        assert probe_mp4(root / video_id / "content.mp4")[0] == probe_mp4(tmp_path / f"{seed}.mp4")[0]
