"""Chaos soak: the cases of tests/test_chaos.py (benchmarks/chaos.py), longer videos, round the kills for a while."""

import argparse
import collections
import itertools
import random
import tempfile
import time
import traceback
from pathlib import Path

import ray

from benchmarks import start_ray
from benchmarks.chaos import KILLS, random_case, run_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="start no case after this long")
    parser.add_argument("--max-frames", type=int, default=160, help="longest video of a case, in frames (8 fps)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the cases drawn (default: a random one)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    start_ray(2)
    address = ray.get_runtime_context().gcs_address
    started = time.time()
    runs, kills, frames, lost = collections.Counter(), collections.Counter(), 0, []
    try:
        for kill in itertools.cycle(KILLS):
            if time.time() - started > args.minutes * 60:
                break
            case = random_case(rng, kill, args.max_frames)
            with tempfile.TemporaryDirectory(prefix="chaos-") as folder:
                try:
                    outcome = run_case(case, Path(folder), address)
                except Exception:
                    lost.append(case)
                    print(f"LOST: {case}\n{traceback.format_exc()}", flush=True)
                    continue
            runs[kill] += 1
            kills[kill] += outcome.kills
            frames += outcome.frames
            print(f"{sum(runs.values()):4d} {kill:10s} frames {case.frames}: {outcome.kills} kill(s) survived, "
                  f"{outcome.frames} frames checked", flush=True)
    finally:
        ray.shutdown()
    minutes = (time.time() - started) / 60
    print(f"\nchaos soak (--seed {seed}): {sum(runs.values()) + len(lost)} cases in {minutes:.1f} min, "
          f"{sum(kills.values())} kills survived, {frames} frames checked frame by frame, "
          f"{f'{len(lost)} cases LOST' if lost else 'nothing lost'}")
    for kill in KILLS:
        print(f"  {kill:10s} {runs[kill]:4d} cases, {kills[kill]:4d} kills survived")
    raise SystemExit(1 if lost else 0)


if __name__ == "__main__":
    main()
