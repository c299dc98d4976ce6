"""Chaos, small cases: whatever is killed, the video is complete, in order and unchanged (benchmarks/chaos.py)."""

import tempfile
from pathlib import Path

import pytest
import ray
from hypothesis import Phase, given, settings

from benchmarks.chaos import cases, run_case

EXAMPLES = {"stage": 2, "sink": 2, "checkpoint": 2, "process": 2, "torn": 2, "join": 2}  # the soak runs more


@pytest.fixture(scope="module")
def cluster() -> str:
    """One local Ray cluster for the module: the driver's own runs, and the `pavdm` children that join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.parametrize("kill", EXAMPLES)
def test_nothing_is_lost_whatever_is_killed(cluster, kill):
    kills = []

    @settings(max_examples=EXAMPLES[kill], deadline=None, database=None, phases=[Phase.generate])
    @given(cases((kill,)))
    def survives(case):
        with tempfile.TemporaryDirectory(prefix="chaos-") as folder:
            kills.append(run_case(case, Path(folder), cluster).kills)

    survives()
    assert sum(kills) > 0, "no case reached its kill point"  # a case may end first; not all of them
