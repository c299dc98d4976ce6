"""The `pavdm` commands end to end: outputs, determinism, and one-line errors for bad input."""

import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from conftest import probe_mp4

from orchestrator.core.config import from_yaml
from orchestrator.core.prompts import split_entry
from orchestrator.entry.cli import main
from orchestrator.state.outputs import read_latents
from tests.tiny_models import MICRO_TRAINING

GAUSSIAN = ["--model", "gaussian", "--quiet", "model.height=16", "model.width=16", "pipeline.stages=0"]
IN_PROCESS = ["--quiet", "pipeline.stages=0"]


def generate(tmp_path: Path, *args: str, name: str = "video.mp4") -> Path:
    out = tmp_path / name
    assert main(["generate", *GAUSSIAN, "--out", str(out), *args]) == 0
    return out


def test_gaussian_video_has_exact_frame_count_and_saved_config(tmp_path):
    out = generate(tmp_path, "--seconds", "3.3", "--fps", "10", "--latents-out", str(tmp_path / "l.arrow"))
    assert probe_mp4(out) == (33, 16, 16, "h264")
    assert (tmp_path / "video.config.yaml").read_text().count("seconds: 3.3") == 1
    table = pa.ipc.open_file(str(tmp_path / "l.arrow")).read_all()
    assert table.column("frame").to_pylist() == list(range(33))
    assert read_latents(tmp_path / "l.arrow").shape == (3, 33, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.arrow", "video.config.yaml", "video.mp4"]


def test_scale_enlarges_the_mp4_into_pixel_blocks_and_leaves_the_latents(tmp_path):
    plain, big = tmp_path / "plain.arrow", tmp_path / "big.arrow"
    generate(tmp_path, "--seconds", "1", "--latents-out", str(plain), name="plain.mp4")
    out = generate(tmp_path, "--seconds", "1", "--latents-out", str(big), "output.scale=4", "output.crf=0",
                   name="big.mp4")
    assert plain.read_bytes() == big.read_bytes()
    assert probe_mp4(out) == (8, 64, 64, "h264")
    with av.open(str(out)) as container:  # lossless (crf 0) luma: the plane before chroma is subsampled
        luma = np.stack([f.to_ndarray()[:64] for f in container.decode(video=0)]).astype(int)  # [8, 64, 64]
    blocks = luma.reshape(8, 16, 4, 16, 4)  # [f, y, 4, x, 4]
    assert (blocks.max(axis=(2, 4)) == blocks.min(axis=(2, 4))).all()  # every pixel became a 4x4 block
    assert luma.std() > 10  # of a real picture, not one flat colour


def test_same_seed_same_latents_other_seed_differs(tmp_path):
    paths = []
    for name, seed in [("a", "1"), ("b", "1"), ("c", "2")]:
        latents = tmp_path / f"{name}.arrow"
        generate(tmp_path, "--seconds", "2", "--seed", seed, "--latents-out", str(latents), name=f"{name}.mp4")
        paths.append(latents.read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]


def test_init_latents_continue_a_video(tmp_path):
    first = tmp_path / "first.arrow"
    generate(tmp_path, "--seconds", "2", "--latents-out", str(first), name="first.mp4")
    out = generate(tmp_path, "--seconds", "1", "--init-latents", str(first), name="second.mp4")
    assert probe_mp4(out)[0] == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seconds", "0"], "seconds must be > 0"),
        (["--fps", "-5"], "fps must be > 0"),
        (["schedule.steps=31"], "schedule.steps (31) must be a multiple of schedule.noisy_chunks (6)"),
        (["schedule.no_such_key=1"], "schedule.no_such_key"),
        (["schedule.steps=many"], "schedule.steps"),
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "5:late start"], "first prompt must start at 0"),
        (["pipeline.stages=9"], "exceeds the 6 noisy chunks"),
        (["--init-latents", "/nonexistent/clip.arrow"], "does not exist"),
        (["output.scale=0"], "output.scale must be >= 1"),
        (["output.scale=600"], "within 8192x8192 pixels, got 600 (9600x9600)"),
        (["output.crf=52"], "output.crf must be in 0..51"),
        (["schedule.context_level=30"], "schedule.context_level must be in 0..steps-1 (29), got 30"),
        (["schedule.context_level=1", "schedule.kind=replace_noise"], "a kind other than replace_noise"),
        (["schedule.stochasticity=1.5"], "schedule.stochasticity must be in [0, 1], got 1.5"),
        (["pipeline.halo=1"], "pipeline.halo=1 applies to pipeline.parallel=halo only"),
        (["pipeline.parallel=ring"], "pipeline.parallel"),
        (["pipeline.collective_timeout=0"], "pipeline.collective_timeout must be > 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, args, message):
    out = tmp_path / "video.mp4"
    assert main(["generate", *GAUSSIAN, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_model_folder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "neither a model config" in err and err.count("\n") == 1


def test_unwritable_out(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    assert main(["generate", *GAUSSIAN, "--out", str(tmp_path / "missing" / "v.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", *GAUSSIAN, "--out", str(locked)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_console_exit_code_and_single_line_from_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.entry.cli", "generate", "--seconds", "-1",
         "--out", str(tmp_path / "v.mp4")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["pavdm: error: seconds must be > 0, got -1.0"]
    assert list(tmp_path.iterdir()) == []


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--seconds", "soon"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_eval_refuses_an_override_taken_for_a_schedule_before_any_work(capsys):
    """--kinds takes every word after it, so an override placed there is named at once, not after the first kind."""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--kinds", "progressive", "model.path=elsewhere"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'model.path=elsewhere'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["generate"]])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    for word in (["generate"] if not command else ["--prompt", "--seconds", "--fps", "--seed", "--out",
                                                    "--model", "--config", "--latents-out", "KEY=VALUE"]):
        assert word in text


def test_diffusers_pixel_model_makes_an_mp4(tmp_path, tiny_pixel_model):
    out = tmp_path / "sky.mp4"
    code = main(["generate", "--model", str(tiny_pixel_model), *IN_PROCESS, "--seconds", "2.5", "--fps", "6",
                 "--out", str(out), "model.height=16", "model.width=24", "model.guidance_scale=2.0"])
    assert code == 0
    assert probe_mp4(out) == (15, 24, 16, "h264")


def test_diffusers_vae_model_with_folder_text_encoder(tmp_path, tiny_vae_model):
    out = tmp_path / "sky.mp4"
    code = main(["generate", "--model", str(tiny_vae_model), *IN_PROCESS, "--seconds", "2", "--fps", "7",
                 "--out", str(out), "model.height=16", "model.width=16", "schedule.chunk=2",
                 "schedule.noisy_chunks=3", "schedule.steps=6"])
    assert code == 0
    assert probe_mp4(out) == (14, 16, 16, "h264")


def test_prompt_schedule_switches_the_conditioning_at_its_time(tmp_path):
    latents = tmp_path / "l.arrow"
    generate(tmp_path, "--seconds", "4", "--prompt", "0:a red circle", "--prompt", "2:a green square",
             "--latents-out", str(latents))
    prompts = pa.ipc.open_file(str(latents)).read_all().column("prompt").to_pylist()
    # chunks of 5 frames at 8 fps: chunk 4 (frames 20-24) is the first to start at or after 2 s
    assert prompts == ["a red circle"] * 20 + ["a green square"] * 12


def test_live_video_takes_its_prompts_from_a_pipe_and_ends_with_the_input(tmp_path):
    """Each line becomes the prompt from the next chunk to enter (one chunk each); the end of input stops it after
    the window drains, with a complete MP4 whose saved schedule records both."""
    lines = ["a red circle bouncing", "a green square bouncing"]
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.entry.cli", "generate", "--live", *GAUSSIAN[:-1], "--out", "live.mp4",
         "--latents-out", "live.arrow", "metrics.port=0", "pipeline.num_cpus=0.5"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = from_yaml((tmp_path / "live.config.yaml").read_text())
    assert [split_entry(entry)[1] for entry in saved.prompts][-2:] == lines
    frames = round(saved.seconds * saved.fps)
    assert probe_mp4(tmp_path / "live.mp4")[0] == frames and frames % 5 == 0  # whole chunks of 5 frames
    prompts = pa.ipc.open_file(str(tmp_path / "live.arrow")).read_all().column("prompt").to_pylist()
    assert prompts[-5:] == [lines[1]] * 5 and prompts[-10:-5] == [lines[0]] * 5  # the last two chunks, in turn


def test_train_prints_both_losses_with_still_steps(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--quiet", f"out={out}", "optim.steps=4", *MICRO_TRAINING, "data.stills_every=1",
                 "data.windows_every=2", "data.stills_batch=4"]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"trained 4 steps in [\d.]+ min; loss [\d.]+ -> [\d.]+; stills [\d.]+ -> [\d.]+; "
                        rf"saved to {re.escape(str(out))}", line)
    assert (out / "transformer" / "config.json").is_file()


def test_train_refuses_a_bad_setting_before_any_work(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--quiet", f"out={out}", "optim.steps=4", *MICRO_TRAINING, "data.stills_every=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.stills_every must be 0 (no stills) or 1 (a stills phase)" in err and "\n" not in err
    assert not out.exists()
