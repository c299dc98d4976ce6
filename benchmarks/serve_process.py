"""`pavdm serve` in a child process on a free loopback port, for the API tests and the load test."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

API_KEY = "test-key-1234"


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free now: all are held open while chosen, so none is handed out twice."""
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]


class Server:
    """`pavdm serve` on a free loopback port with its runs store in `root`."""

    def __init__(self, root: Path, overrides: list[str], api_key: str | None = API_KEY, model: str = "tiny"):
        """api_key None: no PAVDM_API_KEY (keys from serve.keys_file in `overrides`, or none at all)."""
        self.root, self.port = root, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PAVDM_API_KEY")}
        if api_key:
            env["PAVDM_API_KEY"] = api_key
        command = [sys.executable, "-m", "orchestrator.entry.cli", "serve", "--port", str(self.port),
                   "--root", str(root), "--model", model, "metrics.port=0", "pipeline.num_cpus=0.5", *overrides]
        self.log = open(root.parent / f"serve-{self.port}.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pavdm serve exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or the app still deploying
                pass
            time.sleep(0.5)
        raise TimeoutError(f"pavdm serve did not become healthy: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self, signum: int = signal.SIGINT, timeout: float = 60.0) -> int:
        """SIGINT, as Ctrl-C would (or SIGTERM, as Kubernetes would); waits for the process and its Ray cluster to
        go (killed after `timeout`). Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_status(self, video_id: str, states=("completed", "failed"), timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            video = requests.get(f"{self.base}/v1/videos/{video_id}", headers=self.headers, timeout=10).json()
            if video["status"] in states:
                return video
            time.sleep(0.3)
        raise TimeoutError(f"{video_id} still {video['status']}")
