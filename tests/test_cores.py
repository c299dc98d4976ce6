"""Stages' own cores: a claimed core is bound and held until its process ends, no two processes hold one, and the
Ray stages of a pipeline that has room compute each on its own."""

import fcntl
import multiprocessing
import os
from pathlib import Path

import pytest
import ray
from test_pipeline import models, small_config

from actors import cores
from benchmarks.cli_process import wait_until
from orchestrator.engine.ray_pipeline import Pipeline

USABLE = sorted(os.sched_getaffinity(0))


def claim_and_report(claims: Path, count: int, results, release) -> None:
    """In a child process: claim `count` cores in `claims`, report (cores, the thread's affinity), then hold the
    claim until told to end."""
    cores.CLAIMS = claims
    got = cores.bind_own_cores(count)
    results.put((got, sorted(os.sched_getaffinity(0))))
    release.wait(30)


def holder(claims: Path, count: int):
    """A child process holding `count` cores; returns it, what it reports, and the event that ends it."""
    context = multiprocessing.get_context("fork")
    results, release = context.Queue(), context.Event()
    child = context.Process(target=claim_and_report, args=(claims, count, results, release))
    child.start()
    return child, results.get(timeout=30), release


def test_processes_hold_distinct_cores_until_they_end(tmp_path):
    first, (got, affinity), release_first = holder(tmp_path, 1)
    assert len(got) == 1 and got[0] in USABLE and affinity == got  # bound to the core it claimed
    second, (other, other_affinity), release_second = holder(tmp_path, 1)
    if len(USABLE) > 1:
        assert len(other) == 1 and other != got and other_affinity == other
    else:
        assert other == [] and other_affinity == USABLE  # no core left: not bound
    for child, release in ((first, release_first), (second, release_second)):
        release.set()
        child.join(30)
    third, (again, _), release_third = holder(tmp_path, 1)
    release_third.set()
    third.join(30)
    assert again == [USABLE[0]]  # the ended processes gave their cores back


def test_a_process_that_cannot_have_all_its_cores_binds_none(tmp_path):
    child, (got, affinity), release = holder(tmp_path, len(USABLE) + 1)
    release.set()
    child.join(30)
    assert got == [] and affinity == USABLE
    after, (again, _), release_after = holder(tmp_path, len(USABLE))
    release_after.set()
    after.join(30)
    assert again == USABLE  # the failed claim held nothing back


@pytest.mark.parametrize("count", [0, -1])
def test_no_cores_asked_binds_nothing(tmp_path, monkeypatch, count):
    monkeypatch.setattr(cores, "CLAIMS", tmp_path)
    assert cores.bind_own_cores(count) == []
    assert sorted(os.sched_getaffinity(0)) == USABLE


def no_core_claimed() -> bool:
    """Whether no process holds any core now (a pipeline of an earlier test may still be going away)."""
    for core in USABLE:
        try:
            with open(cores.CLAIMS / f"{core}.lock", "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except FileNotFoundError:
            continue
        except BlockingIOError:
            return False
    return True


def stage_cores(config) -> list[tuple[list[int], list[int]]]:
    """Per stage of a pipeline built from `config`: the cores it claimed and the cores its thread may run on."""
    wait_until(no_core_claimed, timeout=30, poll=0.2)
    pipeline = Pipeline(config)
    try:
        return ray.get([stage.__ray_call__.remote(lambda stage: (stage.cores, sorted(os.sched_getaffinity(0))))
                        for stage in pipeline.stages])
    finally:
        pipeline.shutdown()


def test_ray_stages_on_the_cpu_compute_on_cores_of_their_own(ray_cluster, tmp_path):
    """Two stages of one thread on a cluster of 2 CPUs: each is bound to a core no other holds; with
    pipeline.bind_cores=false, or more stages than CPUs, none is."""
    config = small_config(tmp_path, models(None)["gaussian"], 2, parallel="context")
    placed = stage_cores(config)
    held = [core for claimed, _ in placed for core in claimed]
    assert len(held) == min(2, len(USABLE)) and len(set(held)) == len(held)
    for claimed, affinity in placed:
        assert affinity == (claimed or USABLE)
    config.pipeline.bind_cores = False
    assert stage_cores(config) == [([], USABLE)] * 2
    crowded = small_config(tmp_path, models(None)["gaussian"], 3, parallel="context")
    assert stage_cores(crowded) == [([], USABLE)] * 3
