"""Continuous batching: several videos share the stages, each identical to the same video made alone."""

import copy

import pytest
import torch
from test_pipeline import models, reference_latents, small_config

from orchestrator.core.partition import Partition
from orchestrator.engine.engine import Engine
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.state.outputs import read_latents
from orchestrator.state.runs import RunFolder


def stream_configs(tmp_path, model, stages, halo, solver="euler"):
    """Four videos of different seeds, prompts and lengths (so they join and leave at different ticks)."""
    base = small_config(tmp_path, model, stages, halo)
    base.pipeline.max_streams = 3
    base.schedule.solver = solver
    configs = []
    for i, (seconds, seed) in enumerate([(2.0, 1), (4.0, 2), (1.0, 3), (3.0, 4)]):
        config = copy.deepcopy(base)
        config.seconds, config.seed = seconds, seed
        config.prompts = [f"0:a {['red', 'green', 'blue', 'white'][i]} circle"]
        config.output.out = str(tmp_path / f"s{i}.mp4")
        config.output.latents_out = str(tmp_path / f"s{i}.arrow")
        configs.append(config)
    return base, configs


@pytest.mark.parametrize("backend,stages,halo,solver", [
    ("gaussian", 2, 1, "euler"), ("skyreels", 2, "all", "euler"), ("gaussian", 2, "all", "dpmpp_2m"),
    ("gaussian", 2, 1, "dpmpp_3m"),
])
def test_streams_batched_equal_videos_made_alone(ray_cluster, tmp_path, tiny_pixel_model, backend, stages, halo,
                                                 solver):
    """Every stream keeps its own chunks' solver history."""
    base, configs = stream_configs(tmp_path, models(tiny_pixel_model)[backend], stages, halo, solver)
    metrics = PipelineMetrics("streams", stages)
    jobs = [StreamJob(config, RunFolder.create(config)) for config in configs]
    pipeline = Pipeline(base)
    try:
        Engine(pipeline, base, metrics).run(JobQueue(jobs, closed=True))
    finally:
        pipeline.shutdown()
    for job, config in zip(jobs, configs, strict=True):
        assert job.error is None and job.out is not None
        got = read_latents(config.output.latents_out)
        want = reference_latents(config, Partition(stages, None if halo == "all" else halo))
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    batch_sizes = metrics.registry.get_sample_value("pavdm_batch_streams_bucket", {"run_id": "streams", "le": "2.0"})
    calls = metrics.registry.get_sample_value("pavdm_batch_streams_count", {"run_id": "streams"})
    assert calls > batch_sizes > 0  # some ticks batched 3 streams, some fewer
    assert RunFolder.find(jobs[0].id, base.run.root).status().state == "completed"


def test_cancelled_stream_leaves_the_others_alone(ray_cluster, tmp_path):
    base, configs = stream_configs(tmp_path, models(None)["gaussian"], 2, 1)
    jobs = [StreamJob(config, RunFolder.create(config)) for config in configs[:2]]
    ticks = []
    jobs[1].on_frames = lambda frames: ticks.append(frames) or (len(ticks) == 2 and jobs[1].cancelled.set())
    pipeline = Pipeline(base)
    try:
        Engine(pipeline, base, PipelineMetrics("c", 2)).run(JobQueue(jobs, closed=True))
    finally:
        pipeline.shutdown()
    assert jobs[0].out is not None and jobs[1].out is None
    assert "cancelled" in str(jobs[1].error)
    torch.testing.assert_close(read_latents(configs[0].output.latents_out),
                               reference_latents(configs[0], Partition(2, 1)), rtol=1e-4, atol=1e-5)
    assert RunFolder.find(jobs[1].id, base.run.root).status().state == "failed"
