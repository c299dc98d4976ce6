"""Load test of `pavdm serve`: N clients each create a short video and stream it at once.

    python -m benchmarks.load_test [--clients 20] [--seconds 4] [--max-streams 4]

Reports, over the clients, p50/p95 of the time from POST /v1/videos to the first decodable streamed frame
and to the completed video, and that every video completed with the requested frame count.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import statistics
import tempfile
import time
from pathlib import Path

import av
import requests

from benchmarks.serve_process import Server


def decodable_frames(data: bytes) -> int:
    try:
        with av.open(io.BytesIO(data)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.error.InvalidDataError, av.error.EOFError, ValueError):
        return 0


def client(server: Server, index: int, seconds: float) -> dict:
    """One client: create, stream until the end; times relative to its POST."""
    start = time.perf_counter()
    created = requests.post(f"{server.base}/v1/videos", headers=server.headers, timeout=60,
                            json={"prompt": f"a red circle and a blue square bouncing {index}", "seconds": seconds,
                                  "seed": index})
    created.raise_for_status()
    video_id, received, first = created.json()["id"], bytearray(), None
    with requests.get(f"{server.base}/v1/videos/{video_id}/stream", headers=server.headers, stream=True,
                      timeout=600) as stream:
        for part in stream.iter_content(chunk_size=None):
            received += part
            if first is None and decodable_frames(bytes(received)) > 0:
                first = time.perf_counter() - start
    video = server.wait_status(video_id)
    done = time.perf_counter() - start
    return {"first_frame": first, "completed": done, "status": video["status"],
            "frames": decodable_frames(bytes(received))}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-streams", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pavdm-load-")) / "runs"
    root.parent.mkdir(exist_ok=True)
    server = Server(root, [f"pipeline.max_streams={args.max_streams}", f"serve.max_queued={args.clients}",
                           "pipeline.num_cpus=1", "pipeline.threads=2"])
    try:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda i: client(server, i, args.seconds), range(args.clients)))
        wall = time.perf_counter() - start
    finally:
        server.stop()
    completed = [r for r in results if r["status"] == "completed"]
    expected = round(args.seconds * 8)
    print(f"{len(completed)}/{args.clients} completed; {sum(r['frames'] == expected for r in results)} streams "
          f"with all {expected} frames; wall {wall:.1f} s")
    for key in ("first_frame", "completed"):
        values = [r[key] for r in results if r[key] is not None]
        print(f"{key}: p50 {percentile(values, 50):.2f} s, p95 {percentile(values, 95):.2f} s, "
              f"max {max(values):.2f} s")


if __name__ == "__main__":
    main()
