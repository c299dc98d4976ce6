"""Run folders: runs/<run_id>/ with the config, a status file, checkpoints and output segments."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.core.config import Config, from_yaml, to_yaml
from orchestrator.core.errors import UserError
from orchestrator.state.atomic import write_text_atomic
from orchestrator.state.checkpoint import CheckpointStore
from orchestrator.state.segments import covering

STATES = ("running", "completed", "failed", "interrupted")  # and "damaged" in listings: no readable status


@dataclass
class RunStatus:
    run_id: str
    state: str  # one of STATES; "running" with a dead pid shows as "stopped"
    frames_written: int
    frames_total: int
    out: str
    pid: int
    started: float
    updated: float
    error: str = ""

    @property
    def shown_state(self) -> str:
        if self.state == "running" and not _alive(self.pid):
            return "stopped"
        return self.state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RunFolder:
    """One run's folder. Nothing in it claims to be the finished video until the run completes."""

    def __init__(self, path: Path):
        self.path = path
        self.run_id = path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def segments(self) -> Path:
        return self.path / "segments"

    @classmethod
    def create(cls, config: Config) -> RunFolder:
        """A new folder for `config` (its run.id and output.out are filled in and saved)."""
        config.run.id = config.run.id or new_run_id()
        folder = cls(Path(config.run.root) / config.run.id)
        if folder.config_file.exists():
            raise UserError(f"run '{config.run.id}' already exists in {config.run.root}; use `pavdm resume`")
        try:
            folder.segments.mkdir(parents=True)
        except OSError as err:
            raise UserError(f"cannot create run folder {folder.path}: {err.strerror}") from None
        config.output.out = str(Path(config.output.out or folder.path / "video.mp4").resolve())
        if config.output.latents_out:
            config.output.latents_out = str(Path(config.output.latents_out).resolve())
        if config.init_latents:
            config.init_latents = str(Path(config.init_latents).resolve())
        folder.save_config(config)
        return folder

    @classmethod
    def find(cls, run: str, root: str = "runs") -> RunFolder:
        """A run by folder path or by id under `root`."""
        for candidate in (Path(run), Path(root) / run):
            if (candidate / "config.yaml").is_file():
                return cls(candidate)
        raise UserError(f"no run '{run}' (looked for {run}/config.yaml and {Path(root) / run}/config.yaml)")

    def save_config(self, config: Config) -> None:
        write_text_atomic(self.config_file, to_yaml(config))

    def load_config(self) -> Config:
        return from_yaml(self.config_file.read_text())

    def checkpoints(self, config: Config) -> CheckpointStore:
        uri = config.checkpoint.uri or str((self.path / "checkpoints").resolve())
        return CheckpointStore(uri, config.checkpoint.keep)

    def status(self) -> RunStatus | None:
        try:
            return RunStatus(**json.loads(self.status_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def set_status(self, state: str, frames_written: int | None, frames_total: int, out: str, error: str = "") -> None:
        """Record the run's state; frames_written None counts the frames kept in closed segments. Recording it
        completed (its outputs in place) removes its segments: until then a resume finishes from them."""
        previous = self.status()
        now = time.time()
        if frames_written is None:
            frames_written = covering(self.segments, "seg")[0]
        status = RunStatus(self.run_id, state, frames_written, frames_total, out, os.getpid(),
                           previous.started if previous else now, now, error)
        write_text_atomic(self.status_file, json.dumps(asdict(status), indent=1))
        if state == "completed":
            for path in self.segments.glob("*"):
                path.unlink(missing_ok=True)


    def discard_if_unused(self, store: CheckpointStore) -> bool:
        """Remove the folder of a run that failed before it wrote a checkpoint or a segment."""
        if store.names() or any(self.segments.iterdir()):
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # the runs root too, if this run was all it held
        return True


def list_runs(root: str) -> list[RunStatus]:
    """Every run folder under `root` (one holding a config), oldest first, under the name `pavdm resume` takes;
    a missing or unreadable status file shows as state 'damaged'."""
    found = []
    for config_file in Path(root).glob("*/config.yaml"):
        run = RunFolder(config_file.parent)
        status = run.status()
        if status is None:
            changed = config_file.stat().st_mtime
            status = RunStatus(run.run_id, "damaged", covering(run.segments, "seg")[0], 0, "", 0, changed, changed,
                               "status.json is missing or unreadable")
        status.run_id = run.run_id
        found.append(status)
    return sorted(found, key=lambda s: s.started)
