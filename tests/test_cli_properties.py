"""Property: any `pavdm generate` argument list either completes or ends with exit 2 and one line, leaving no output."""

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import probe_mp4
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.entry.cli import main
from orchestrator.state.settings import load_config

BASE = ["generate", "--model", "gaussian", "--quiet", "model.height=8", "model.width=8", "pipeline.stages=0",
        "schedule.chunk=2", "schedule.noisy_chunks=2", "schedule.steps=2"]
OVERRIDES = ["schedule.steps=3", "schedule.chunk=0", "run.id=../x", "run.id=a/b", "run.id=same", "output.crf=99",
             "run.max_seconds=1", "no.such_key=1", "seed=-4", "seconds=inf", "fps=nan", "output.scale=0",
             "schedule.context_chunks=2", "checkpoint.every_shifts=1", "metrics.port=0"]
# Path slots resolved per example in its own folder: CLIP is an existing latents file, DIR an existing folder.
PATHS = ["v.mp4", "x.avi", "DIR", "DIR/v.mp4", "missing/v.mp4", "/proc/v.mp4", "l.arrow", "CLIP"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """A short latents file of the model's frame shape, for --init-latents."""
    folder = tmp_path_factory.mktemp("clip")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        assert main([*BASE, "--seconds", "1", "--out", "clip.mp4", "--latents-out", "clip.arrow"]) == 0
    finally:
        os.chdir(previous)
    return folder / "clip.arrow"


def option(flag: str, values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.sampled_from(values).map(lambda value: [flag, value])


ARGUMENTS = st.lists(st.one_of(
    option("--seconds", ["0", "-1", "inf", "nan", "1e9", "0.5", "1", "2", "soon"]),
    option("--fps", ["8", "4", "0", "-1", "1e300", "241"]),
    option("--seed", ["0", "3", "-1", str(2**63)]),
    option("--prompt", ["a", "", "12:30 meeting", "0:12:30 meeting", "inf:b", "-1:x", "1:b", "0:a"]),
    option("--out", PATHS),
    option("--latents-out", PATHS),
    option("--init-latents", PATHS),
    st.sampled_from(OVERRIDES).map(lambda item: [item]),
), max_size=6).map(lambda parts: [item for part in parts for item in part])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ARGUMENTS)
@example(["--init-latents", "CLIP", "--latents-out", "CLIP", "--seconds", "1"])
@example(["--out", "v.mp4", "--latents-out", "v.mp4"])
@example(["--out", "/proc/v.mp4", "--seconds", "inf"])
@example(["--prompt", "-1:x", "run.id=../x"])
@example(["--out", "v.mp4", "--prompt", "0:12:30 meeting", "--seconds", "1"])
def test_every_run_completes_or_fails_in_one_line_leaving_nothing(clip_file, capsys, arguments):
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        (folder / "DIR").mkdir()
        shutil.copy(clip_file, folder / "CLIP")
        argv = [str(folder / item) if item in PATHS and not item.startswith("/") else item for item in arguments]
        outputs = [Path(argv[i + 1]) for i, item in enumerate(argv[:-1]) if item in ("--out", "--latents-out")]
        untouched = {path: path.read_bytes() for path in outputs if path.is_file()}
        capsys.readouterr()
        with contextlib.redirect_stderr(io.StringIO()) as usage:  # argparse writes its one line itself
            try:
                code = main(BASE + argv)
            except SystemExit as exit_info:
                code = exit_info.code
        err = capsys.readouterr().err + usage.getvalue()
        out = outputs_of(argv, "--out")
        if code == 0:
            if out:  # the MP4 holds exactly the frames its saved config asks for
                config = load_config([str(Path(out).with_suffix(".config.yaml"))])
                assert probe_mp4(Path(out))[0] == round(config.seconds * config.fps)
            return
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pavdm") and "error:" in lines[0], (argv, err)
        assert "Traceback" not in err
        for path in outputs:  # nothing new at an output path, nothing changed there
            assert untouched.get(path) == (path.read_bytes() if path.is_file() else None), (argv, path)
        assert not list(folder.glob(".*.partial")), argv


def outputs_of(argv: list[str], flag: str) -> str | None:
    """The last value given to `flag` (argparse keeps the last one)."""
    values = [argv[i + 1] for i, item in enumerate(argv[:-1]) if item == flag]
    return values[-1] if values else None
