"""Shared fixtures: a Ray cluster per module, tiny model folders built once per session, and a helper to read MP4s
back."""

import io
from pathlib import Path

import av
import pytest
import torch
from tiny_models import make_tiny_skyreels

from benchmarks import start_ray

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_working_directory(tmp_path_factory, monkeypatch):
    """Every test runs in its own empty directory, so run folders (runs/) never land in the repository."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def ray_cluster() -> str:
    """A local Ray cluster of 2 CPUs for one module, set up as `pavdm` sets up its own (workers at the driver's
    priority); yields its address, for `pavdm` children that join it."""
    import ray

    start_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_pixel_model(tmp_path_factory) -> Path:
    return make_tiny_skyreels(tmp_path_factory.mktemp("models") / "pixel")


@pytest.fixture(scope="session")
def tiny_vae_model(tmp_path_factory) -> Path:
    return make_tiny_skyreels(tmp_path_factory.mktemp("models") / "vae", vae=True, folder_text_encoder=True)


def probe_mp4(source: Path | bytes) -> tuple[int, int, int, str]:
    """(decoded frames, width, height, codec) of an MP4 file or its bytes, read back with PyAV."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, stream.codec_context.name
