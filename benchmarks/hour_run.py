"""A one-hour video (86,400 frames at 24 fps) on the gaussian backend through the Ray pipeline, checkpoints on,
killed once in the middle and resumed: exact frame count, flat memory, constant checkpoint size, time share.

    python -m benchmarks.hour_run [--seconds 3600] [--fps 24] [--every-seconds 30] [--workdir /tmp/pavdm-hour]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import psutil

RUN = "hour"


def pipeline_processes(cli: psutil.Process | None) -> list[psutil.Process]:
    procs = [cli] if cli is not None else []
    for p in psutil.process_iter(["cmdline"]):
        if any("ray::Stage" in c or "ray::Sink" in c for c in (p.info["cmdline"] or [])):
            procs.append(p)
    return procs


class Monitor:
    """Samples (frames written, total RSS of CLI + stages + sink, checkpoint sizes) once a second."""

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
            rss = 0
            for p in pipeline_processes(self.cli):
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((self.frames(), rss))
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
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pavdm-hour"))
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
        sys.exit(f"resume failed: {err}")
    with av.open(str(args.workdir / "hour.mp4")) as container:
        frames = sum(1 for _ in container.demux(container.streams.video[0]) if _.size)
    quarter = [s for s in monitor.samples if s[0] < total / 4 and s[1]]
    last = [s for s in monitor.samples if s[0] >= 3 * total / 4 and s[1]]
    first_peak, last_peak = max(r for _, r in quarter), max(r for _, r in last)
    print(f"frames requested {total}, in the MP4 {frames}; killed at {killed_at} frames and resumed")
    print(f"wall {wall / 60:.1f} min; resume run: {out.strip()}")
    print(f"peak RSS (CLI + stages + sink): first quarter {first_peak / 2**20:.0f} MiB, last quarter "
          f"{last_peak / 2**20:.0f} MiB, ratio {last_peak / first_peak:.3f}")
    print(f"checkpoint file sizes seen: {sorted(monitor.checkpoint_sizes)} bytes")


if __name__ == "__main__":
    main()
