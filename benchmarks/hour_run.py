"""A one-hour video (86,400 frames at 24 fps) on the gaussian backend through the Ray pipeline, checkpoints on,
killed once in the middle and resumed (or, with --no-kill, made in one go): exact frame count, flat memory over
every process of the run (the `pavdm` process and all it started: Ray's daemons, workers, stages and sink),
constant checkpoint size, the share of time spent checkpointing.

    python -m benchmarks.hour_run [--seconds 3600] [--fps 24] [--every-seconds 30] [--no-kill] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import psutil

RUN = "hour"


def run_processes(cli: psutil.Process | None) -> list[psutil.Process]:
    """The `pavdm` process and every process it started (a Ray cluster of its own: raylet, gcs_server, workers)."""
    if cli is None:
        return []
    try:
        return [cli, *cli.children(recursive=True)]
    except psutil.Error:
        return []


class Monitor:
    """Samples (frames written, total RSS of the run's processes, RSS of its gcs_server, checkpoint sizes) once a
    second."""

    def __init__(self, workdir: Path):
        self.workdir, self.samples, self.checkpoint_sizes = workdir, [], set()
        self.cli: psutil.Process | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def frames(self) -> int:
        try:
            return json.loads((self.workdir / "runs" / RUN / "status.json").read_text())["frames_written"]
        except (OSError, ValueError, KeyError):
            return 0

    def loop(self) -> None:
        while not self.stop.is_set():
            rss = gcs = 0
            for p in run_processes(self.cli):
                try:
                    size = p.memory_info().rss
                    rss += size
                    gcs += size if p.name() == "gcs_server" else 0
                except psutil.Error:
                    pass
            self.samples.append((self.frames(), rss, gcs))
            for path in (self.workdir / "runs" / RUN / "checkpoints").glob("ckpt-*.arrow"):
                try:
                    self.checkpoint_sizes.add(path.stat().st_size)
                except OSError:
                    pass
            time.sleep(1.0)


def launch(args, *command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.entry.cli", *command], cwd=args.workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--fps", type=float, default=24)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pavdm-hour")
    parser.add_argument("--no-kill", action="store_true", help="make the video in one go, without the kill")
    parser.add_argument("--every-seconds", type=float, default=30)
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    total = round(args.seconds * args.fps)
    monitor = Monitor(args.workdir)
    monitor.thread.start()
    started = time.perf_counter()
    first = launch(args, "generate", "--model", "gaussian", "--quiet", "--seconds", str(args.seconds), "--fps",
                   str(args.fps), "--out", "hour.mp4", f"run.id={RUN}", "model.height=16", "model.width=16",
                   "pipeline.stages=2", "pipeline.num_cpus=0.5", "pipeline.parallel=halo", "pipeline.halo=1",
                   "metrics.port=0",
                   f"checkpoint.every_seconds={args.every_seconds}", "checkpoint.every_shifts=0")
    monitor.cli = psutil.Process(first.pid)
    killed_at = None
    if args.no_kill:
        second = first
    else:
        while monitor.frames() < total // 2 and first.poll() is None:
            time.sleep(1)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = monitor.frames()
        second = launch(args, "resume", RUN, "--quiet", "metrics.port=0")
        monitor.cli = psutil.Process(second.pid)
    out, err = second.communicate()
    wall = time.perf_counter() - started
    monitor.stop.set()
    monitor.thread.join()
    if second.returncode != 0:
        sys.exit(f"the run failed: {err}")
    with av.open(str(args.workdir / "hour.mp4")) as container:
        frames = sum(1 for _ in container.demux(container.streams.video[0]) if _.size)
    quarter = [s for s in monitor.samples if s[0] < total / 4 and s[1]]
    last = [s for s in monitor.samples if s[0] >= 3 * total / 4 and s[1]]
    first_peak, last_peak = max(s[1] for s in quarter), max(s[1] for s in last)
    first_gcs, last_gcs = max(s[2] for s in quarter), max(s[2] for s in last)
    how = "made in one go" if killed_at is None else f"killed at {killed_at} frames and resumed"
    print(f"frames requested {total}, in the MP4 {frames}; {how}")
    print(f"wall {wall / 60:.1f} min; {'the' if killed_at is None else 'resume'} run: {out.strip()}")
    print(f"peak RSS of all the run's processes: first quarter {first_peak / 2**20:.0f} MiB, last quarter "
          f"{last_peak / 2**20:.0f} MiB, ratio {last_peak / first_peak:.3f}; gcs_server {first_gcs / 2**20:.0f} -> "
          f"{last_gcs / 2**20:.0f} MiB")
    print(f"checkpoint file sizes seen: {sorted(monitor.checkpoint_sizes)} bytes")


if __name__ == "__main__":
    main()
