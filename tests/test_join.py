"""Joined MP4 segments hold exactly the frames written, in order, with rising timestamps, whatever their B-frames."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from orchestrator.entry.cli import main
from orchestrator.state import segments
from orchestrator.state.outputs import X264_PRESET, Mp4Writer

HEIGHT, WIDTH, BITS = 64, 128, 8  # the frame index is drawn as BITS 16-pixel blocks, dark for 0 and light for 1
CRF = 18
ORDERS = [(1, 2, 3, 7, 60), (60, 7, 3, 2, 1), (2, 3, 1, 60, 7), (2, 60), (1, 1, 2), (7,)]


def frame(index: int) -> np.ndarray:
    """A slowly brightening background (so the encoder picks B-frames) over the index in binary."""
    picture = np.full((HEIGHT, WIDTH, 3), 60 + index % 40, np.uint8)
    for bit in range(BITS):
        picture[HEIGHT // 2:, 16 * bit:16 * (bit + 1)] = 230 if index >> bit & 1 else 20
    return picture


def write_segments(folder: Path, lengths: tuple[int, ...], fps: float, bframes: bool, start: int = 0,
                   crf: int = CRF, preset: str = X264_PRESET) -> list[Path]:
    paths = []
    for length in lengths:
        paths.append(folder / segments.segment_name("seg", start, start + length))
        writer = Mp4Writer(paths[-1], fps, WIDTH, HEIGHT, crf, preset)
        if not bframes:
            writer.stream.codec_context.options = {**writer.stream.codec_context.options, "bf": "0"}
        writer.write(torch.from_numpy(np.stack([frame(start + k) for k in range(length)])))
        writer.close()
        start += length
    return paths


def read_back(path: Path) -> tuple[list[int], list[av.VideoFrame]]:
    """DTS of every packet, in file order, and every decoded frame."""
    with av.open(str(path)) as container:
        dts = [packet.dts for packet in segments.demux_frames(container)]
    with av.open(str(path)) as container:
        return dts, list(container.decode(video=0))


def strictly_increasing(values: list) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("bframes", [True, False], ids=["bframes", "no-bframes"])
@pytest.mark.parametrize("lengths", ORDERS, ids=lambda lengths: "-".join(map(str, lengths)))
def test_join_keeps_every_frame_in_order(tmp_path, monkeypatch, lengths, bframes):
    fps = 8.0
    joined = tmp_path / "joined.mp4"
    parts = write_segments(tmp_path, lengths, fps, bframes)
    monkeypatch.setattr(segments, "reencode", None)  # segments of one encoder's settings are copied as they are
    segments.join_mp4(parts, joined, CRF)
    dts, frames = read_back(joined)
    assert len(frames) == len(dts) == sum(lengths)
    assert strictly_increasing(dts)
    assert strictly_increasing([decoded.pts for decoded in frames])
    assert [decoded.time for decoded in frames] == pytest.approx([index / fps for index in range(sum(lengths))])
    for index, decoded in enumerate(frames):
        assert np.abs(decoded.to_ndarray(format="rgb24").astype(int) - frame(index)).mean() < 2, index
    if 60 in lengths:  # the case this guards: segments that really reorder frames, and ones that do not
        assert any(decoded.pict_type == av.video.frame.PictureType.B for decoded in frames) == bframes


@pytest.mark.parametrize("crf,preset", [(30, X264_PRESET), (CRF, "medium")], ids=["crf-changed", "other-preset"])
def test_segments_of_other_encoder_settings_are_reencoded_to_join(tmp_path, crf, preset):
    """Segments made before a resume that changed output.crf, or by an earlier version's x264 preset: their packets
    would be read under the last segment's headers and decode to garbage or not at all, so they are re-encoded."""
    old = write_segments(tmp_path, (5, 9), 8.0, bframes=True, crf=crf, preset=preset)
    new = write_segments(tmp_path, (6,), 8.0, bframes=True, start=14)
    assert segments.encoder_headers(old[0]) != segments.encoder_headers(new[0])
    joined = tmp_path / "joined.mp4"
    segments.join_mp4(old + new, joined, CRF)
    dts, frames = read_back(joined)
    assert len(frames) == 20 and strictly_increasing(dts)
    for index, decoded in enumerate(frames):
        assert np.abs(decoded.to_ndarray(format="rgb24").astype(int) - frame(index)).mean() < 3, index


def test_join_at_an_ntsc_rate(tmp_path):
    fps = 29.97
    joined = tmp_path / "joined.mp4"
    segments.join_mp4(write_segments(tmp_path, (2, 7, 3), fps, bframes=True), joined, CRF)
    _, frames = read_back(joined)
    assert [decoded.time for decoded in frames] == pytest.approx([index / fps for index in range(12)])


def test_in_process_run_with_a_short_first_segment(tmp_path, monkeypatch):
    """The run of issue 35, shortened: a 2-frame first segment without reordering delay, later ones with it."""
    leading_dts, join = [], segments.join_mp4

    def spy(parts: list[Path], out: Path, crf: int) -> None:
        for part in parts:
            with av.open(str(part)) as container:
                leading_dts.append(next(segments.demux_frames(container)).dts)
        join(parts, out, crf)

    monkeypatch.setattr(segments, "join_mp4", spy)
    out = tmp_path / "ref.mp4"
    assert main(["generate", "--model", "gaussian", "--quiet", "--seconds", "6", "--fps", "8", "--seed", "9",
                 "schedule.chunk=2", "schedule.noisy_chunks=4", "schedule.steps=24", "checkpoint.every_shifts=2",
                 "pipeline.stages=0", "--out", str(out)]) == 0
    assert leading_dts[0] == 0 and min(leading_dts[1:]) < 0
    dts, frames = read_back(out)
    assert len(frames) == 48
    assert strictly_increasing(dts)
    assert [decoded.time for decoded in frames] == pytest.approx([index / 8 for index in range(48)])
