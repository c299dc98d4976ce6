"""What a new user broke in an afternoon: every input checked before work starts, nothing overwritten or lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import probe_mp4

import orchestrator.entry.generate
import orchestrator.state.segments
from orchestrator.core.errors import UserError
from orchestrator.entry.batch import MANIFEST, row_config
from orchestrator.entry.cli import build_parser, main
from orchestrator.state.settings import load_config
from tests.test_cli import GAUSSIAN


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, words: str) -> None:
    assert code == 2, err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def generate(tmp_path, *args: str) -> int:
    return main(["generate", *GAUSSIAN, *args])


def test_1_an_output_never_overwrites_an_input(tmp_path, capsys):
    clip = tmp_path / "l1.arrow"
    assert generate(tmp_path, "--seconds", "2", "--latents-out", str(clip), "--out", str(tmp_path / "c1.mp4")) == 0
    before = clip.read_bytes()
    code, err = run_cli(capsys, "generate", *GAUSSIAN, "--seconds", "1", "--init-latents", str(clip),
                        "--latents-out", str(clip), "--out", str(tmp_path / "c8.mp4"))
    assert_one_line_error(code, err, "--init-latents and --latents-out name the same file")
    assert clip.read_bytes() == before
    assert not (tmp_path / "c8.mp4").exists()


def test_2a_an_unwritable_out_is_refused_before_any_frame(tmp_path, capsys):
    code, err = run_cli(capsys, "generate", *GAUSSIAN, "--out", "/proc/video.mp4")
    assert_one_line_error(code, err, "cannot write in folder '/proc'")
    assert not os.path.exists("runs")


def test_2b_a_failed_final_join_keeps_every_frame_and_resume_finishes_elsewhere(tmp_path, capsys, monkeypatch):
    def disk_full(segments, out, crf):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(orchestrator.state.segments, "join_mp4", disk_full)
        code, err = run_cli(capsys, "generate", *GAUSSIAN, "--seconds", "2", "run.id=full",
                            "--out", str(tmp_path / "v.mp4"))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "all 16 frames are made and kept" in err and "No space left on device" in err
    assert "pavdm resume" in err and "--out OTHER.mp4" in err
    assert not list(tmp_path.glob("*v.mp4*")) and not list(tmp_path.glob("*.config.yaml"))
    assert main(["runs"]) == 0
    listed = capsys.readouterr().out.splitlines()[1].split()
    assert listed[:3] == ["full", "failed", "16/16"]

    def no_model(*args, **kwargs):
        raise AssertionError("resume generated again instead of joining the kept frames")

    monkeypatch.setattr(orchestrator.entry.generate, "build_backend", no_model)
    other = tmp_path / "other.mp4"
    assert main(["resume", "full", "--quiet", "--out", str(other)]) == 0
    assert probe_mp4(other)[0] == 16
    assert (tmp_path / "other.config.yaml").is_file()


def test_3_out_and_latents_out_naming_one_file(tmp_path, capsys):
    same = tmp_path / "both.mp4"
    code, err = run_cli(capsys, "generate", *GAUSSIAN, "--out", str(same), "--latents-out", str(same))
    assert_one_line_error(code, err, "--out and --latents-out name the same file")
    assert list(tmp_path.iterdir()) == [] and not os.path.exists("runs")


@pytest.mark.parametrize("args, words", [
    (["--seconds", "inf"], "seconds must be > 0"),
    (["--seconds", "nan"], "seconds must be > 0"),
    (["--fps", "1e300"], "fps must be > 0 and at most 240"),
    (["--seconds", "1e9"], "seconds must be at most 3600 (run.max_seconds), got 1e+09"),
    (["--seconds", "120", "run.max_seconds=60"], "seconds must be at most 60 (run.max_seconds)"),
])
def test_4_lengths_have_a_documented_bound(tmp_path, capsys, args, words):
    code, err = run_cli(capsys, "generate", *GAUSSIAN, "--out", str(tmp_path / "v.mp4"), *args)
    assert_one_line_error(code, err, words)
    assert list(tmp_path.iterdir()) == []


def test_4_a_batch_row_out_of_range_fails_alone():
    base = load_config(model="gaussian")
    with pytest.raises(UserError, match=r"seconds must be at most 3600 \(run.max_seconds\), got 9999"):
        row_config(base, {"prompt": "a red circle", "seconds": 9999}, 0)
    assert row_config(base, {"prompt": "a red circle", "seconds": 3600}, 0)[1].seconds == 3600


@pytest.mark.parametrize("run_id", ["../escape", "a/b", ".hidden", "ok-1.2"])
def test_5_run_ids_name_one_folder_under_the_root(tmp_path, capsys, run_id):
    code, err = run_cli(capsys, "generate", *GAUSSIAN, f"run.id={run_id}", "--out", str(tmp_path / "v.mp4"))
    if run_id == "ok-1.2":
        assert code == 0 and os.path.isdir("runs/ok-1.2")
        return
    assert_one_line_error(code, err, "must be 1-100 letters, digits")
    assert not os.path.exists("runs") and not os.path.exists("escape")


def test_6a_runs_lists_every_folder_resume_takes(tmp_path, capsys):
    assert generate(tmp_path, "--seconds", "1", "run.id=first", "--out", str(tmp_path / "a.mp4")) == 0
    shutil.copytree("runs/first", "runs/copied")
    shutil.copytree("runs/first", "runs/damaged")
    Path("runs/damaged/status.json").write_text("{not json")
    capsys.readouterr()
    assert main(["runs"]) == 0
    table = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert table == {"first": "completed", "copied": "completed", "damaged": "damaged"}


def test_6b_an_interrupted_batch_row_is_recorded_interrupted_with_its_reason(tmp_path):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    prompts.write_text(json.dumps({"id": "long", "prompt": "a red circle", "seconds": 600}) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    # The child must take SIGINT as from a terminal even where this test runs with SIGINT ignored (a background job
    # of a shell without job control), which a child would inherit: Python then leaves it ignored.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.entry.cli", "batch", str(prompts), "--out", str(out), "--quiet",
             "--model", "gaussian", "--root", str(tmp_path / "runs"), "model.height=8", "model.width=8",
             "metrics.port=0", "pipeline.num_cpus=0.5"],
            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    status = next((tmp_path / "runs").glob("batch-*"), tmp_path) / "long" / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline and '"frames_written": 0' in (status.read_text() if status.exists() else
                                                                '"frames_written": 0'):
        time.sleep(0.5)
        status = next((tmp_path / "runs").glob("batch-*/long/status.json"), status)
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "pavdm: interrupted" in err and "Traceback" not in err
    import pyarrow.parquet as pq
    row = pq.read_table(out / MANIFEST).to_pylist()[0]
    assert row["status"] == "interrupted" and "run it again to continue" in row["error"]
    assert json.loads(status.read_text())["state"] == "interrupted"


def test_7_help_defaults_agree_with_the_config(capsys):
    defaults = load_config(model="tiny")
    commands = build_parser()._subparsers._group_actions[0].choices
    generate_help = " ".join(commands["generate"].format_help().split())
    for words in [f"(default {defaults.seconds:g},", f"(default {defaults.fps:g})", f"(default {defaults.seed})",
                  f"(default {defaults.run.root}/<run id>/video.mp4)"]:
        assert words in generate_help
    for name, parser in commands.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action.default, str | int | float) and not isinstance(action.default, bool) and \
                    action.help and "default" in action.help:
                assert f"default {action.default}" in text, (name, action.dest)


@pytest.mark.parametrize("seed, fine", [(1.9, False), (-1, False), ("7", True), (7.0, True), (2**63, False)])
def test_7_one_seed_rule_for_cli_batch_and_api(capsys, tmp_path, seed, fine):
    from orchestrator.entry.serving.requests import ApiError, RequestChecker

    base = load_config(model="gaussian")
    checker = RequestChecker(base.serve, "gaussian", "16x16")
    if fine:
        assert row_config(base, {"prompt": "x", "seed": seed}, 0)[1].seed == 7
        assert checker.seed({"seed": seed}) == 7
        return
    with pytest.raises(UserError, match="seed must be a whole number in 0..9223372036854775807"):
        row_config(base, {"prompt": "x", "seed": seed}, 0)
    with pytest.raises(ApiError, match="seed must be a whole number"):
        checker.seed({"seed": seed})
    if isinstance(seed, int):
        code, err = run_cli(capsys, "generate", *GAUSSIAN, "--seed", str(seed), "--out", str(tmp_path / "v.mp4"))
        assert_one_line_error(code, err, "seed must be a whole number")


@pytest.mark.parametrize("prompts, words", [
    (["12:30 meeting"], "written with its time, e.g. '0:12:30 meeting'"),
    (["a", "inf:b"], "starts at inf s; a start time and a transition are finite numbers of seconds >= 0"),
    (["-1:x"], "starts at -1 s; a start time and a transition are finite numbers of seconds >= 0"),
])
def test_8_prompt_schedules(tmp_path, capsys, prompts, words):
    flags = [item for prompt in prompts for item in ("--prompt", prompt)]
    code, err = run_cli(capsys, "generate", *GAUSSIAN, *flags, "--out", str(tmp_path / "v.mp4"))
    assert_one_line_error(code, err, words)


def test_8_an_escaped_prompt_runs_and_an_entry_after_the_end_is_named(tmp_path, caplog):
    out = tmp_path / "v.mp4"
    assert generate(tmp_path, "--seconds", "2", "--prompt", "0:12:30 meeting", "--prompt", "5:too late",
                    "--out", str(out)) == 0
    assert "prompt 'too late' at 5 s never shows: the last chunk starts at 1.875 s" in caplog.text
    assert load_config([str(tmp_path / "v.config.yaml")]).prompts == ["0:12:30 meeting", "5:too late"]


def test_9_out_must_be_an_mp4(tmp_path, capsys):
    code, err = run_cli(capsys, "generate", *GAUSSIAN, "--out", str(tmp_path / "x.avi"))
    assert_one_line_error(code, err, "--out '" + str(tmp_path / "x.avi") + "' must end in .mp4")
    assert list(tmp_path.iterdir()) == []


def test_6c_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.entry.cli", "generate", *GAUSSIAN, "--seconds", "600", "run.id=term",
         "checkpoint.every_shifts=1", "--out", str(tmp_path / "v.mp4")], stderr=subprocess.PIPE, text=True)
    status = Path("runs/term/status.json")
    deadline = time.time() + 60
    while time.time() < deadline and not (status.exists() and json.loads(status.read_text())["frames_written"]):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "pavdm: interrupted", err
    recorded = json.loads(status.read_text())
    assert recorded["state"] == "interrupted" and recorded["frames_written"] > 0
