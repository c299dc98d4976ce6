"""Chaos, small cases: whatever is killed, the video is complete, in order and unchanged (benchmarks/chaos.py)."""

import tempfile
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings

from benchmarks.chaos import cases, run_case

EXAMPLES = {"stage": 2, "sink": 2, "checkpoint": 2, "process": 2, "torn": 2, "join": 2}  # the soak runs more


@pytest.mark.parametrize("kill", EXAMPLES)
def test_nothing_is_lost_whatever_is_killed(ray_cluster, kill):
    kills = []

    @settings(max_examples=EXAMPLES[kill], deadline=None, database=None, phases=[Phase.generate])
    @given(cases((kill,)))
    def survives(case):
        with tempfile.TemporaryDirectory(prefix="chaos-") as folder:
            kills.append(run_case(case, Path(folder), ray_cluster).kills)

    survives()
    assert sum(kills) > 0, "no case reached its kill point"  # a case may end first; not all of them
