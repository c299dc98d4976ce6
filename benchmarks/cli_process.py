"""`pavdm` commands in child processes, watched through their run folders, for the tests and the chaos soak."""

import json
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str, cwd: Path, wait: bool = True, env: dict | None = None, timeout: float = 600):
    """`pavdm ARGS` in `cwd`: its completed result, or with wait=False the running process (text pipes)."""
    command = [sys.executable, "-m", "orchestrator.entry.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def frames_written(cwd: Path, run_id: str) -> int:
    """The frames a run's status file says are kept (0 while it has none)."""
    try:
        return json.loads((cwd / "runs" / run_id / "status.json").read_text())["frames_written"]
    except (OSError, ValueError, KeyError):
        return 0


def wait_until(condition, timeout: float = 120, poll: float = 0.1) -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(poll)
