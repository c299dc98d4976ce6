"""The Python API: the CLI's videos from a pipeline object, a stream in constant memory, callbacks, bad input."""

import json
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from conftest import probe_mp4

import pavdm
from actors.backends.factory import build_codec
from actors.backends.gaussian import GaussianProcessBackend
from orchestrator.entry.cli import main
from orchestrator.state.outputs import enlarge, read_latents

PROMPT = "a magenta square bouncing"
SMALL = {"model": {"height": 16, "width": 16}, "schedule": {"chunk": 2, "noisy_chunks": 2, "steps": 4}}
SMALL_ARGS = ["model.height=16", "model.width=16", "schedule.chunk=2", "schedule.noisy_chunks=2", "schedule.steps=4"]
MODELS = {  # name -> (from_pretrained arguments, the same for the CLI)
    "tiny": ({}, []),
    "gaussian": (SMALL, SMALL_ARGS),
    "tiny_pixel_model": ({"model": {"height": 16, "width": 16}}, ["model.height=16", "model.width=16"]),
    "tiny_vae_model": (SMALL, SMALL_ARGS),
}


def gaussian(stages: int | None = None, **sections) -> pavdm.ProgressivePipeline:
    """The oracle at 16x16 on a small window, with more config sections or keys of them."""
    config = {key: {**SMALL.get(key, {}), **sections.get(key, {})} for key in SMALL.keys() | sections.keys()}
    return pavdm.ProgressivePipeline.from_pretrained("gaussian", stages=stages, **config)


def cli_latents(tmp_path: Path, model: str, *args: str) -> torch.Tensor:
    latents = tmp_path / "cli.arrow"
    assert main(["generate", "--model", model, "--quiet", "pipeline.stages=0", "--prompt", PROMPT, "--out",
                 str(tmp_path / "cli.mp4"), "--latents-out", str(latents), *args]) == 0
    return read_latents(latents)


@pytest.mark.parametrize("model", MODELS)
def test_a_call_makes_the_latents_of_the_cli(tmp_path, request, model):
    config, args = MODELS[model]
    name = str(request.getfixturevalue(model)) if model.endswith("_model") else model
    pipe = pavdm.ProgressivePipeline.from_pretrained(name, **config)
    latents = pipe(PROMPT, seconds=2, seed=0, output_type="latent", progress=False).frames
    assert torch.equal(latents, cli_latents(tmp_path, name, "--seconds", "2", "--seed", "0", *args))


def test_frames_in_every_output_type_are_the_decoded_latents_as_the_mp4_shows_them():
    pipe = gaussian(output={"scale": 2})
    video = pipe(PROMPT, seconds=2, progress=False)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (16, 32, 32, 3)  # 16x16, output.scale 2
    assert (video.run_id, video.video_path, video.stopped) == ("", None, False)
    latents = pipe(PROMPT, seconds=2, output_type="latent", progress=False).frames  # [3, 16, 16, 16]
    decoded = build_codec(pipe.config.model).decoder().decode(latents)  # [16, 16, 16, 3]
    assert np.array_equal(video.frames, enlarge(decoded, 2).numpy())
    assert torch.equal(pipe(PROMPT, seconds=2, output_type="pt", progress=False).frames, enlarge(decoded, 2))
    images = pipe(PROMPT, seconds=2, output_type="pil", progress=False).frames
    assert np.array_equal(np.stack([np.asarray(image) for image in images]), video.frames)


def test_prompt_schedules_seeds_and_generators_are_spelled_as_in_the_cli(tmp_path, tiny_pixel_model):
    args = ["model.height=16", "model.width=16", "--seconds", "2", "--seed", "3"]
    cli = tmp_path / "cli.arrow"
    assert main(["generate", "--model", str(tiny_pixel_model), "--quiet", "pipeline.stages=0", "--prompt",
                 "0:a red circle", "--prompt", "1:a green square", "--out", str(tmp_path / "cli.mp4"),
                 "--latents-out", str(cli), *args]) == 0
    pipe = pavdm.ProgressivePipeline.from_pretrained(tiny_pixel_model, model={"height": 16, "width": 16})
    pairs = pipe([(0, "a red circle"), (1, "a green square")], seconds=2, generator=torch.Generator().manual_seed(3),
                 output_type="latent", progress=False).frames
    entries = pipe(["0:a red circle", "1:a green square"], seconds=2, seed=3, output_type="latent",
                   progress=False).frames
    assert torch.equal(pairs, read_latents(cli)) and torch.equal(entries, pairs)


def test_init_latents_continue_a_video_from_a_file_or_a_tensor(tmp_path):
    pipe = gaussian()
    first = pipe(PROMPT, seconds=2, output_type="latent", progress=False).frames
    path = tmp_path / "first.arrow"
    cli_latents(tmp_path, "gaussian", "--seconds", "2", *SMALL_ARGS)
    Path(tmp_path / "cli.arrow").rename(path)
    from_file = pipe(PROMPT, seconds=1, seed=1, init_latents=path, output_type="latent", progress=False).frames
    from_tensor = pipe(PROMPT, seconds=1, seed=1, init_latents=first, output_type="latent", progress=False).frames
    assert torch.equal(from_file, from_tensor) and from_file.shape == (3, 8, 16, 16)


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_a_stream_of_a_minute_yields_every_frame_once_in_order_in_flat_memory():
    pipe = gaussian(schedule={"steps": 2})
    frames, memory = [], []
    for start, chunk in pipe.stream(PROMPT, seconds=60, progress=False):
        frames += range(start, start + len(chunk))
        assert chunk.shape[1:] == (16, 16, 3)
        memory.append(rss())
    assert frames == list(range(480))
    quarter = len(memory) // 4
    assert max(memory[-quarter:]) <= 1.05 * max(memory[:quarter]), (max(memory[:quarter]), max(memory[-quarter:]))


def test_a_stream_broken_after_10_s_leaves_a_run_that_pavdm_resume_finishes_to_the_same_video(tmp_path):
    whole = gaussian(schedule={"steps": 2})(PROMPT, seconds=60, output_type="latent", progress=False).frames
    latents = tmp_path / "latents.arrow"
    pipe = gaussian(schedule={"steps": 2}, checkpoint={"every_shifts": 8}, output={"latents_out": str(latents)})
    for start, _ in pipe.stream(PROMPT, seconds=60, run_root=tmp_path / "runs", run_id="minute", progress=False):
        if start >= 80:
            break
    status = json.loads((tmp_path / "runs" / "minute" / "status.json").read_text())
    assert status["state"] == "interrupted" and 0 < status["frames_written"] <= 80
    assert not latents.exists()
    assert main(["resume", "minute", "--root", str(tmp_path / "runs"), "--quiet"]) == 0
    assert torch.equal(read_latents(latents), whole)
    assert probe_mp4(tmp_path / "runs" / "minute" / "video.mp4")[:3] == (480, 16, 16)


def count_model_calls(monkeypatch) -> list[int]:
    calls = []
    velocity = GaussianProcessBackend.velocity

    def counted(self, *args):
        calls.append(len(calls))
        return velocity(self, *args)

    monkeypatch.setattr(GaussianProcessBackend, "velocity", counted)
    return calls


def test_the_callback_hears_every_model_call_with_its_tick_and_the_levels_in_the_window(monkeypatch):
    model_calls = count_model_calls(monkeypatch)
    heard = []
    video = gaussian(schedule={"context_chunks": 1})(
        PROMPT, seconds=2, progress=False, callback_on_step_end=lambda pipe, tick, info: heard.append((tick, info)))
    assert video.frames.shape == (16, 16, 16, 3)
    assert [tick for tick, _ in heard] == list(range(len(model_calls))) == list(range(18))  # s (M + N - 1) = 2 * 9
    assert all(info["num_ticks"] == 18 and info["tick"].index == tick for tick, info in heard)
    assert heard[0][1]["levels"] == ((0, 4, 3),)  # the newest chunk enters at S = 4
    assert heard[2][1]["levels"] == ((0, 2, 1), (1, 4, 3))  # a shift later: one position older, s = 2 levels lower
    assert heard[4][1]["levels"] == ((0, 0, 0), (1, 2, 1), (2, 4, 3))  # chunk 0 finished: the clean context
    for chunk in range(8):  # every chunk goes through all levels, S -> 0, one per call, and finishes at 0
        steps = [(before, after) for _, info in heard for m, before, after in info["levels"]
                 if m == chunk and before != after]
        assert steps == [(4, 3), (3, 2), (2, 1), (1, 0)]
        assert [tick for tick, info in heard if chunk in info["finished"]] == [3 + 2 * chunk]


def test_the_callback_stops_the_run_after_the_call_it_asks_to_and_the_run_resumes(tmp_path, monkeypatch):
    whole = gaussian()(PROMPT, seconds=2, progress=False).frames
    model_calls = count_model_calls(monkeypatch)
    pipe = gaussian(checkpoint={"every_shifts": 1})
    heard = []

    def stop_after_tick_5(pipe, tick, info):
        heard.append(tick)
        return {"stop": True} if tick == 5 else info  # returning its info, as diffusers callbacks do, goes on

    video = pipe(PROMPT, seconds=2, callback_on_step_end=stop_after_tick_5, run_root=tmp_path / "runs",
                 run_id="short", progress=False)
    assert video.stopped and video.run_id == "short" and video.video_path is None
    assert heard == list(range(6)) and len(model_calls) == 6
    assert np.array_equal(video.frames, whole[:4])  # chunks 0 and 1 finished at ticks 3 and 5
    status = json.loads((tmp_path / "runs" / "short" / "status.json").read_text())
    assert status["state"] == "interrupted" and "pavdm resume" in status["error"]
    assert not list(pipe.stream(PROMPT, seconds=2, callback_on_step_end=lambda *_: {"stop": True}, progress=False))
    out = pipe.resume("short", run_root=tmp_path / "runs", progress=False)
    assert out == (tmp_path / "runs" / "short" / "video.mp4").resolve() and probe_mp4(out)[0] == 16


def temporary_runs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("pavdm-*"))


@pytest.mark.parametrize("bad, named", [
    (lambda: pavdm.ProgressivePipeline.from_pretrained("no-such-model"), "no-such-model"),
    (lambda: pavdm.ProgressivePipeline.from_pretrained("gaussian", schedule={"no_such_key": 1}), "no_such_key"),
    (lambda: pavdm.ProgressivePipeline.from_pretrained("gaussian", overrides=["no_such.key=1"]), "no_such"),
    (lambda: pavdm.ProgressivePipeline.from_pretrained("gaussian", torch_dtype=torch.int8), "torch_dtype"),
    (lambda: gaussian()(PROMPT, seconds=0, run_root="runs"), "seconds must be > 0"),
    (lambda: gaussian().stream(PROMPT, seconds=-1, run_root="runs"), "seconds must be > 0"),
    (lambda: gaussian()(PROMPT, output_type="mp4", run_root="runs"), "output_type"),
    (lambda: gaussian()(PROMPT, seed=-1, run_root="runs"), "seed"),
    (lambda: gaussian()([(5, PROMPT)], run_root="runs"), "first prompt must start at 0"),
    (lambda: gaussian(pipeline={"executor": "ray"})(PROMPT, output_type="latent", run_root="runs"), "in-process"),
    (lambda: gaussian()(PROMPT, init_latents="no-such.arrow", run_root="runs"), "does not exist"),
    (lambda: gaussian()(PROMPT, run_id="x"), "run_root"),
])
def test_bad_input_is_a_value_error_naming_it_before_any_work(bad, named):
    before = temporary_runs()
    with pytest.raises(ValueError, match=named):
        bad()
    assert not Path("runs").exists() and temporary_runs() == before


def test_write_video_writes_frames_and_streams_with_the_cli_writer(tmp_path):
    pipe = gaussian()
    frames = pipe(PROMPT, seconds=2, progress=False).frames
    assert pavdm.write_video(frames, tmp_path / "a.mp4", fps=8) == tmp_path / "a.mp4"
    assert probe_mp4(tmp_path / "a.mp4") == (16, 16, 16, "h264")
    pavdm.write_video(pipe.stream(PROMPT, seconds=3, output_type="pil", progress=False), tmp_path / "b.mp4", fps=8)
    assert probe_mp4(tmp_path / "b.mp4") == (24, 16, 16, "h264")
    latents = pipe(PROMPT, seconds=2, output_type="latent", progress=False)
    for bad, path, named in [(latents, "c.mp4", "uint8 RGB frames"), (frames, "c.avi", ".mp4"), ([], "c.mp4", "no")]:
        with pytest.raises(ValueError, match=named):
            pavdm.write_video(bad, tmp_path / path, fps=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


def test_to_sets_the_device_and_help_shows_examples():
    pipe = pavdm.ProgressivePipeline.from_pretrained("tiny", torch_dtype=torch.bfloat16)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu") and pipe.config.model.dtype == "bfloat16"
    for documented in (pavdm.ProgressivePipeline, pavdm.ProgressivePipeline.from_pretrained,
                       pavdm.ProgressivePipeline.__call__, pavdm.ProgressivePipeline.stream, pavdm.write_video):
        assert "Example:" in documented.__doc__


def test_on_the_ray_pipeline_a_call_and_a_broken_stream_make_the_in_process_video(tmp_path):
    whole = gaussian(schedule={"steps": 2})(PROMPT, seconds=10, progress=False).frames
    latents = tmp_path / "latents.arrow"
    pipe = gaussian(pipeline={"executor": "ray"}, schedule={"steps": 2}, metrics={"port": 0},
                    output={"latents_out": str(latents)})
    assert np.array_equal(pipe(PROMPT, seconds=10, progress=False).frames, whole)
    for start, _ in pipe.stream(PROMPT, seconds=10, run_root=tmp_path / "runs", run_id="ray", progress=False):
        if start >= 40:
            break  # the run is checkpointed at its next shift boundary and left resumable
    status = json.loads((tmp_path / "runs" / "ray" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["frames_written"] >= 40
    assert main(["resume", "ray", "--root", str(tmp_path / "runs"), "--quiet", "pipeline.executor=process"]) == 0
    in_process = gaussian(schedule={"steps": 2})(PROMPT, seconds=10, output_type="latent", progress=False).frames
    assert torch.equal(read_latents(latents), in_process)
