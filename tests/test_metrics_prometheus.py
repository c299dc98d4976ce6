"""A real Prometheus server scrapes a running pipeline; its counters read back equal the frames written."""

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from actors.backends.factory import frame_count
from benchmarks.serve_process import free_port
from orchestrator.core.config import Config, ModelConfig, ScheduleConfig
from orchestrator.core.schedule import total_ticks
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import plan_video
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.engine.runner import run_video
from orchestrator.state.runs import RunFolder


@pytest.fixture
def prometheus(tmp_path):
    """Yields (start(target_port) -> base URL); the server is stopped after the test."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: `make test` installs Debian's prometheus package"
    processes = []

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 500ms\n"
            "scrape_configs:\n  - job_name: pavdm\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200, 30)
        return base

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def wait_for(condition, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return
        except (OSError, IndexError, KeyError, ValueError):  # not up yet, or no sample yet
            pass
        time.sleep(0.25)
    raise TimeoutError("condition not met in time")


def query(base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    return json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]


def test_prometheus_reads_back_frames_written(tmp_path, prometheus, ray_cluster):
    config = Config(seconds=40.0, fps=8.0, seed=1)
    config.schedule = ScheduleConfig(chunk=2, noisy_chunks=4, steps=8)
    config.model = ModelConfig(channels=3, height=16, width=16)
    config.pipeline.stages, config.pipeline.num_cpus, config.pipeline.threads = 2, 0.5, 1
    config.output.out = str(tmp_path / "v.mp4")
    config.run.id = "prom-test"  # the stream's series carry its run id, the pipeline's the metrics' id
    plan = plan_video(config, frame_count(config.model))
    pipeline = Pipeline(config)
    metrics = PipelineMetrics("prom-test", 2)
    port = free_port()
    metrics.serve("127.0.0.1", port)
    base = prometheus(port)
    wait_for(lambda: query(base, 'up{job="pavdm"}')[0]["value"][1] == "1", 30)
    seen_mid_run = []

    def watch():
        while not done.is_set():
            result = query(base, 'pavdm_frames_emitted_total{run_id="prom-test"}')
            if result and 0 < float(result[0]["value"][1]) < plan.size.frames:
                seen_mid_run.append(float(result[0]["value"][1]))
            time.sleep(0.25)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_video(pipeline, config, RunFolder.create(config), metrics)
    finally:
        done.set()
        watcher.join()
        pipeline.shutdown()
    frames = plan.size.frames
    wait_for(lambda: float(query(base, 'pavdm_frames_emitted_total{run_id="prom-test"}')[0]["value"][1])
             == frames, 20)
    assert seen_mid_run, "Prometheus never scraped the run while it was going"
    ticks = query(base, 'pavdm_ticks_total{run_id="prom-test"}')[0]["value"][1]
    assert int(float(ticks)) == total_ticks(plan.geometry, plan.num_chunks)
    stages = {r["metric"]["stage"] for r in query(base, "pavdm_stage_call_duration_seconds_count")}
    assert stages == {"0", "1"}
    metrics.close()
