"""Context mode: P stages computing each model call together make plain PA-VDM's video, batched or not, and a
SIGKILLed stage is recovered without waiting on the collective it left."""

import copy
import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch
from test_pipeline import models, reference_latents, run_on, small_config

from orchestrator.core.config import Config, ModelConfig
from orchestrator.core.partition import Partition
from orchestrator.engine.engine import Engine
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.ray_pipeline import Pipeline
from orchestrator.engine.runner import run_jobs
from orchestrator.state.outputs import LatentsWriter, read_latents
from orchestrator.state.runs import RunFolder
from orchestrator.state.settings import load_config


def context_config(tmp_path: Path, model: ModelConfig, stages: int, name: str, seconds: float, seed: int = 3
                   ) -> Config:
    config = small_config(tmp_path, model, stages, seconds=seconds, parallel="context")  # C = 2, N = 3, K = 1
    config.seed, config.prompts, config.metrics.port = seed, [f"0:a circle {seed}", "1:a square"], 0
    config.output = dataclasses.replace(config.output, out=str(tmp_path / f"{name}.mp4"),
                                        latents_out=str(tmp_path / f"{name}.arrow"))
    return config


def assert_plain(config: Config, got: torch.Tensor) -> None:
    """Equal to the single-process reference sampler's plain PA-VDM (no partition) within 1e-4."""
    want = reference_latents(config, Partition())
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def write_clip(path: Path, latent_shape: tuple[int, int, int], frames: int) -> str:
    """An initial clip of random latents [Ch, F, h, w] in an Arrow latents file."""
    writer = LatentsWriter(path, latent_shape)
    writer.write(torch.randn((latent_shape[0], frames, *latent_shape[1:]), generator=torch.Generator().manual_seed(5)),
                 "clip")
    writer.close()
    return str(path)


def run_streams(pipeline: Pipeline, base: Config, configs: list[Config], run_id: str = "joint") -> PipelineMetrics:
    """The videos batched on one pipeline; each must succeed."""
    metrics = PipelineMetrics(run_id, base.pipeline.stages)
    jobs = [StreamJob(config, RunFolder.create(config)) for config in configs]
    Engine(pipeline, base, metrics).run(JobQueue(jobs, closed=True))
    assert all(job.error is None for job in jobs), [job.error for job in jobs]
    return metrics


def batched_pair(tmp_path: Path, model: ModelConfig, stages: int, latent_shape) -> tuple[Config, list[Config]]:
    """Two videos of different lengths: 13 frames from nothing (not a multiple of C), 10 from a 4-frame clip."""
    alone = context_config(tmp_path, model, stages, f"p{stages}-alone", seconds=13 / 8, seed=1)
    clip = copy.deepcopy(alone)
    clip.seconds, clip.seed = 10 / 8, 2
    clip.init_latents = write_clip(tmp_path / f"p{stages}-init.arrow", latent_shape, 4)
    clip.output = dataclasses.replace(clip.output, out=str(tmp_path / f"p{stages}-clip.mp4"),
                                      latents_out=str(tmp_path / f"p{stages}-clip.arrow"))
    return alone, [alone, clip]


@pytest.mark.parametrize("backend", ["gaussian", "skyreels-vae-guided"])
def test_joint_calls_make_plain_pavdm_batched_from_nothing_and_from_a_clip(ray_cluster, tmp_path, tiny_vae_model,
                                                                          backend):
    """N = 3: P = 2 does not divide it. P = 2 carries two streams of different lengths in one batched call, one
    from nothing and one from a clip; P = 3 one from nothing, with a multistep solver's history crossing bands,
    stochastic steps and a re-noised context (noise the stages draw). The SkyReels model has a VAE and guidance 2."""
    model = models(None)["gaussian"] if backend == "gaussian" else ModelConfig(
        backend="diffusers", path=str(tiny_vae_model), height=8, width=8, guidance_scale=2.0)
    for stages in (2, 3):
        base = context_config(tmp_path, model, stages, f"p{stages}", seconds=13 / 8)
        if stages == 3:
            base.schedule = dataclasses.replace(base.schedule, solver="dpmpp_3m", stochasticity=0.5, context_level=1)
        pipeline = Pipeline(base)
        try:
            if stages == 3:
                assert_plain(base, run_on(pipeline, base))
                continue
            base, pair = batched_pair(tmp_path, model, stages, pipeline.latent_shape)
            metrics = run_streams(pipeline, base, pair)
        finally:
            pipeline.shutdown()
        for config in pair:
            assert_plain(config, read_latents(config.output.latents_out))
        value = metrics.registry.get_sample_value
        assert value("pavdm_batch_streams_bucket", {"run_id": "joint", "le": "1.0"}) < \
            value("pavdm_batch_streams_count", {"run_id": "joint"})  # some calls carried both streams
        for stage in ("0", "1"):
            assert value("pavdm_collective_bytes_total", {"run_id": "joint", "stage": stage}) > 0


def test_the_shipped_model_in_three_stages_makes_its_plain_video(ray_cluster, tmp_path):
    """N = 4 and P = 3; 10 frames are not a multiple of C = 3."""
    config = load_config([], ["seconds=1.25", "pipeline.stages=3", "pipeline.num_cpus=0.25", "pipeline.threads=1",
                              "metrics.port=0", f"output.latents_out={tmp_path / 'tiny.arrow'}",
                              f"output.out={tmp_path / 'tiny.mp4'}"], model="tiny")
    pipeline = Pipeline(config)
    try:
        assert_plain(config, run_on(pipeline, config))
    finally:
        pipeline.shutdown()


def test_a_killed_stage_is_recovered_to_the_uninterrupted_video(ray_cluster, tmp_path):
    """Stage 1 is SIGKILLed mid-run; stage 0, in a collective with it, gives up at once (not after the timeout),
    the pipeline is rebuilt, and the video continues from its last checkpoint to the same latents."""
    timeout = 30.0

    def config(name: str) -> Config:
        made = context_config(tmp_path, models(None)["gaussian"], 2, name, seconds=5.0)
        made.pipeline.collective_timeout, made.checkpoint.every_shifts = timeout, 2
        made.recovery.backoff_seconds = 0.1
        return made

    uninterrupted = config("uninterrupted")
    assert run_jobs(uninterrupted, JobQueue([StreamJob(uninterrupted, RunFolder.create(uninterrupted))],
                                            closed=True), PipelineMetrics("u", 2)) == 0
    killed = config("killed")
    job = StreamJob(killed, RunFolder.create(killed))
    pipelines, events = [], {}

    def on_frames(frames: int) -> None:
        if frames >= 16 and "kill" not in events:
            os.kill(ray.get(pipelines[0].stages[1].pid.remote()), signal.SIGKILL)
            events["kill"] = time.monotonic()

    def on_pipeline(pipeline) -> None:
        if pipeline is None and "kill" in events:
            events.setdefault("noticed", time.monotonic())
        elif pipeline is not None:
            pipelines.append(pipeline)

    job.on_frames = on_frames
    assert run_jobs(killed, JobQueue([job], closed=True), PipelineMetrics("k", 2), on_executor=on_pipeline) == 1
    assert job.error is None, job.error
    assert events["noticed"] - events["kill"] < timeout / 2
    assert torch.equal(read_latents(killed.output.latents_out), read_latents(uninterrupted.output.latents_out))
