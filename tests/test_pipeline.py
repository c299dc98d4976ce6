"""The Ray pipeline reproduces the reference sampler for every partition, streams frames, and fails cleanly."""

import threading
import time

import pytest
import ray
import torch
from conftest import probe_mp4

from actors.backends.factory import frame_count
from orchestrator.core.config import Config, ModelConfig, ScheduleConfig
from orchestrator.core.partition import Partition
from orchestrator.core.sampler import NoiseSource, sample
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.plan import initial_chunks, plan_video
from orchestrator.engine.ray_pipeline import Pipeline, with_stage_cpus
from orchestrator.engine.runner import run_video
from orchestrator.entry.generate import GenerationResult, generate
from orchestrator.state.outputs import read_latents
from orchestrator.state.runs import RunFolder

HALOS = [0, 1, "all"]


def small_config(tmp_path, model: ModelConfig, stages: int, halo="all", seconds=2.0, parallel="halo") -> Config:
    config = Config(seconds=seconds, fps=8.0, seed=3, prompts=["0:a red circle", "1:a blue square"])
    config.schedule = ScheduleConfig(chunk=2, noisy_chunks=3, steps=6, context_chunks=1)
    config.model = model
    config.pipeline.stages, config.pipeline.halo, config.pipeline.parallel = stages, halo, parallel
    config.pipeline.num_cpus, config.pipeline.threads = 0.25, 1
    config.output.out = str(tmp_path / f"p{stages}-h{halo}.mp4")
    config.output.latents_out = str(tmp_path / f"p{stages}-h{halo}.arrow")
    return config


def reference_latents(config: Config, partition: Partition) -> torch.Tensor:
    """The in-process reference sampler with the same partition (and initial clip): [Ch, F, h, w]."""
    from actors.backends.base import PromptEncodings
    from actors.backends.factory import build_backend

    backend = build_backend(config.model)
    plan = plan_video(config, frame_count(config.model))
    encodings = PromptEncodings(backend)
    shape = (backend.latent_shape[0], plan.geometry.chunk, *backend.latent_shape[1:])
    init = initial_chunks(config.init_latents, backend.latent_shape, plan.geometry.chunk)
    chunks = sample(backend.velocity, plan.geometry, plan.num_chunks, NoiseSource(config.seed, shape),
                    lambda m: encodings.get(plan.prompts.of(m)), init, partition=partition)
    return torch.cat([x for _, x in chunks], dim=1)[:, : plan.size.latent_frames]


def run_on(pipeline: Pipeline, config: Config) -> torch.Tensor:
    metrics = PipelineMetrics("test", config.pipeline.stages)
    run_video(pipeline, config, RunFolder.create(config), metrics)
    return read_latents(config.output.latents_out)


def models(tiny_pixel_model):
    return {
        "gaussian": ModelConfig(channels=2, height=8, width=8, rho=0.8, spectrum_exponent=1.0),
        "skyreels": ModelConfig(backend="diffusers", path=str(tiny_pixel_model), height=8, width=8,
                                text_encoder="minilm"),
    }


@pytest.mark.parametrize("backend", ["gaussian", "skyreels"])
def test_pipeline_equals_reference_for_every_partition(ray_cluster, tmp_path, tiny_pixel_model, backend):
    torch.set_num_threads(1)
    model = models(tiny_pixel_model)[backend]
    plain = reference_latents(small_config(tmp_path, model, 1), Partition(1, None))
    for stages in (1, 2, 3):
        pipeline = Pipeline(small_config(tmp_path, model, stages))
        try:
            for halo in HALOS if stages > 1 else ["all"]:  # one band sees the whole window whatever its halo
                config = small_config(tmp_path, model, stages, halo)
                got = run_on(pipeline, config)
                partition = Partition(stages, None if halo == "all" else halo)
                assert torch.equal(got, reference_latents(config, partition)), (stages, halo)
                if halo == "all" or stages == 1:  # exact PA-VDM
                    assert torch.equal(got, plain), (stages, halo)
        finally:
            pipeline.shutdown()


@pytest.mark.parametrize("solver,fresh_noise", [("euler", False), ("euler", True), ("dpmpp_2m", False),
                                                ("dpmpp_3m", True)])
def test_same_video_for_one_two_and_three_stages(ray_cluster, tmp_path, fresh_noise, solver):
    """Also with the settings that draw noise in the stages (stochastic steps and a re-noised context), and with
    every solver: a multistep solver's history crosses from band to band with its chunk."""
    model = models(None)["gaussian"]
    videos = []
    for stages in (1, 2, 3):
        config = small_config(tmp_path, model, stages)
        config.metrics.port = 0
        config.schedule.solver = solver
        if fresh_noise:
            config.schedule.stochasticity, config.schedule.context_level = 0.5, 1
        result: GenerationResult = generate(config, progress=False)
        assert probe_mp4(result.out)[0] == 16
        videos.append(read_latents(config.output.latents_out))
    assert all(torch.equal(videos[0], video) for video in videos[1:])
    assert torch.equal(videos[0], reference_latents(config, Partition(1, None)))


def test_subscriber_gets_frames_in_order_before_the_end(ray_cluster, tmp_path):
    config = small_config(tmp_path, models(None)["gaussian"], 2, 1, seconds=12.0)
    pipeline = Pipeline(config)
    received, first_at, ended_at = [], [], []

    def subscribe():
        index, done = 0, False
        while not done:
            frames, done = pipeline.recent_frames(run.run_id, index, 0.5)
            for i, frame in frames:
                if not first_at:
                    first_at.append(time.time())
                received.append(i)
                assert frame.shape == (8, 8, 3)
            index = received[-1] + 1 if received else 0

    try:
        run = RunFolder.create(config)
        reader = threading.Thread(target=subscribe)
        reader.start()
        time.sleep(0.2)

        run_video(pipeline, config, run, PipelineMetrics("s", 2))
        ended_at.append(time.time())
        reader.join(timeout=30)
    finally:
        pipeline.shutdown()
    assert received == list(range(96))
    assert first_at[0] < ended_at[0]


def test_stages_share_the_free_cpus_unless_told(ray_cluster):
    config = Config()
    config.pipeline.stages = 2
    free = ray.available_resources()["CPU"]  # the module's cluster: 2 CPUs, less what its actors still hold
    assert with_stage_cpus(config).pipeline.num_cpus == min(free / 2, 2.0)
    config.pipeline.num_cpus = 0.25
    assert with_stage_cpus(config).pipeline.num_cpus == 0.25
