"""Checkpoint files: round trip, checksum, atomic writes, retention, failures that keep the last good one."""

import pytest
import torch

from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.core.sampler import Window
from orchestrator.state.checkpoint import Checkpoint, CheckpointStore, CorruptCheckpoint, decode, encode
from orchestrator.state.run_state import SinkState, checkpoint_meta, make_checkpoint, start_from


def sample_checkpoint(tick: int) -> Checkpoint:
    tensors = {"chunk/3": torch.randn(3, 2, 4, 4), "chunk/-1": torch.zeros(3, 2, 4, 4),
               "decoder/first": torch.tensor([1])}
    return Checkpoint(tick, 10 * tick, {"seed": 5, "prompts": ["0:a"], "init_count": 1}, tensors)


def test_round_trip_is_exact():
    original = sample_checkpoint(7)
    restored = decode(encode(original))
    assert (restored.next_tick, restored.frames_written, restored.meta) == (7, 70, original.meta)
    assert restored.tensors.keys() == original.tensors.keys()
    assert all(torch.equal(restored.tensors[k], original.tensors[k]) for k in original.tensors)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_damage_is_detected(damage):
    blob = bytearray(encode(sample_checkpoint(1)))
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "truncate":
        blob = blob[: len(blob) - 100]
    else:
        blob = bytearray()
    with pytest.raises(CorruptCheckpoint):
        decode(bytes(blob))


def test_store_keeps_the_newest_and_falls_back_past_damage(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "ckpt"), keep=2)
    for tick in (5, 10, 15):
        store.write(sample_checkpoint(tick))
    names = store.names()
    assert [n.rsplit("-", 1)[1] for n in names] == ["000000000010.arrow", "000000000015.arrow"]
    (tmp_path / "ckpt" / names[-1].rsplit("/", 1)[1]).write_bytes(b"garbage")
    assert store.latest().next_tick == 10
    assert "skipping damaged checkpoint" in caplog.text


def test_failed_write_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path / "ckpt"), keep=3)
    store.write(sample_checkpoint(5))

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "fs", _Refusing(store.fs, refuse))
    with pytest.raises(UserError, match="cannot write checkpoint .* No space left on device"):
        store.write(sample_checkpoint(10))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["ckpt-000000000005.arrow"]
    assert store.latest().next_tick == 5


class _Refusing:
    """Wraps a filesystem, failing every output stream it would open."""

    def __init__(self, fs, refuse):
        self.fs, self.open_output_stream = fs, refuse

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_uri_that_is_not_a_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write checkpoint"):
        CheckpointStore(str(blocker / "ckpt")).write(sample_checkpoint(1))


def test_solver_history_round_trips_and_another_solver_is_refused():
    """Issue 37: the window's history is saved under its own names and restored; a checkpoint made with one
    solver does not resume with another, and the refusal names the key."""
    config = Config()
    config.schedule.solver = "dpmpp_3m"
    window = Window({-1: torch.randn(3, 5, 4, 4), 4: torch.randn(3, 5, 4, 4)}, {4: torch.randn(2, 3, 5, 4, 4)})
    checkpoint = decode(encode(make_checkpoint(12, window, SinkState(), checkpoint_meta(config, 1))))
    assert sorted(checkpoint.tensors) == ["chunk/-1", "chunk/4", "history/4"]
    restored = start_from(checkpoint, config).window
    assert restored.chunks.keys() == window.chunks.keys() and restored.history.keys() == {4}
    assert torch.equal(restored.history[4], window.history[4]) and torch.equal(restored.chunks[-1], window.chunks[-1])
    config.schedule.solver = "euler"
    with pytest.raises(UserError, match=r"different video settings: schedule\.solver$"):
        start_from(checkpoint, config)
