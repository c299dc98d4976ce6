"""The probe: it reads colours and shapes off world frames, scores ground truth near perfect, noise near zero,
and notices seams, blur, colour drift and the wrong prompt."""

import time

import numpy as np
import pytest

from training.world.probe import classify_pixels, label_components, score_segment, score_video, segment
from training.world.scenes import BACKGROUND, COLOURS, ObjectSpec, Scene, ScriptedWorld, World, body_mask, random_scene

TWO = Scene((ObjectSpec("circle", "red"), ObjectSpec("square", "blue")))
QUALITY = ("presence", "count_stability", "background_clean", "sharpness", "colour_drift")


def mean(results: list[dict], key: str) -> float:
    return float(np.nanmean([r[key] for r in results]))


def test_components_are_four_connected_and_per_colour():
    classes = np.zeros((1, 6, 6), dtype=int)
    classes[0, 1:5, 1] = classes[0, 4, 1:5] = classes[0, 1:5, 4] = 1  # a U: one component
    classes[0, 0, 5] = 1  # touches the U only diagonally: its own component
    classes[0, 2, 2] = 2  # another colour inside the U
    labels = label_components(classes)[0]
    assert len({labels[1, 1], labels[4, 2], labels[1, 4]}) == 1
    assert len({labels[1, 1], labels[0, 5], labels[2, 2]}) == 3
    assert (labels[classes[0] == 0] == classes.size).all()


def test_background_and_world_colours_are_classified():
    frame = np.array([[BACKGROUND, COLOURS["cyan"], (128, 128, 128)]], dtype=np.uint8)  # [1, 3, 3]
    np.testing.assert_array_equal(classify_pixels(frame), [[0, 6, -1]])
    assert segment(World(TWO, 0).frames(1)[0] * 0) == []


def test_probe_recovers_colours_shapes_areas_and_centroids():
    rng = np.random.default_rng(0)
    clear = clear_right = overlapping = overlapping_right = 0
    for seed in range(20):
        scene = random_scene(rng, max_objects=3)
        world = World(scene, seed)
        for _ in range(40):
            masks = [body_mask(body, 32) for body in world.bodies]
            blobs = segment(world.frames(1)[0])
            found = {(b.colour, b.shape) for b in blobs}
            right = found == {(o.colour, o.shape) for o in scene.objects}
            if sum(masks).max() > 1:  # objects overlap: the one below is partly hidden
                overlapping += 1
                overlapping_right += right
                continue
            by_colour = {b.colour: b for b in blobs}
            right &= all(
                by_colour[o.colour].area == mask.sum()
                and np.allclose(by_colour[o.colour].centroid, (np.nonzero(mask)[1].mean() + 0.5,
                                                               np.nonzero(mask)[0].mean() + 0.5))
                for o, mask in zip(scene.objects, masks, strict=True)
                if o.colour in by_colour
            )
            clear += 1
            clear_right += right
    assert clear > 300 and overlapping > 100
    assert clear_right / clear >= 0.95
    assert overlapping_right / overlapping >= 0.8


def test_ground_truth_scores_near_perfect():
    rng = np.random.default_rng(1)
    results = []
    for seed in range(8):
        scene = random_scene(rng, max_objects=2)
        results += score_video(World(scene, seed).frames(48), scene, fps=8.0)
    assert len(results) == 24
    assert all(mean(results, key) > 0.9 for key in QUALITY)
    assert mean(results, "size_stability") > 0.85 and mean(results, "smoothness") > 0.6
    assert max(r["abruptness"] for r in results) < 2.5


def test_uniform_noise_scores_near_zero():
    noise = np.random.default_rng(0).integers(0, 256, size=(48, 32, 32, 3), dtype=np.uint8)
    results = score_video(noise, TWO, fps=8.0)
    assert mean(results, "presence") < 0.1
    assert mean(results, "count_stability") < 0.1 and mean(results, "background_clean") < 0.1


def test_a_seam_spikes_abruptness():
    video = np.concatenate([World(TWO, 0).frames(20), World(TWO, 3).frames(12)])  # a jump at frame 20
    abrupt = [r["abruptness"] for r in score_video(video, TWO, fps=8.0)]
    assert abrupt[0] < 2 and abrupt[1] > 3
    at_boundary = np.concatenate([World(TWO, 0).frames(16), World(TWO, 3).frames(16)])  # a jump at frame 16
    assert score_video(at_boundary, TWO, fps=8.0)[1]["abruptness"] > 3  # the step into a segment counts
    assert score_segment(at_boundary[16:], TWO)[0]["abruptness"] < 2  # ... and only it


def test_blur_noise_and_drift_lower_their_metrics():
    frames = World(TWO, 2).frames(16).astype(np.float32)
    blurred = (frames + np.roll(frames, 1, 1) + np.roll(frames, -1, 1) + np.roll(frames, 1, 2) + np.roll(frames, -1, 2))
    speckled = frames + np.random.default_rng(0).normal(0, 25, frames.shape)
    drifted = frames + np.array([-50, 50, 50])  # every colour pushed towards cyan
    clean, reference = score_segment(frames.astype(np.uint8), TWO)
    assert clean["sharpness"] > 0.95 and clean["background_clean"] > 0.99 and clean["colour_drift"] == 1
    assert score_segment((blurred / 5).astype(np.uint8), TWO)[0]["sharpness"] < 0.7
    assert score_segment(np.clip(speckled, 0, 255).astype(np.uint8), TWO)[0]["background_clean"] < 0.8
    assert score_segment(frames.astype(np.uint8), TWO, reference)[0]["colour_drift"] > 0.98
    assert score_segment(np.clip(drifted, 0, 255).astype(np.uint8), TWO, reference)[0]["colour_drift"] < 0.5


def test_jitter_lowers_smoothness():
    scene = Scene((ObjectSpec("circle", "green"),))
    world = World(scene, 4, size=64)
    jitter = np.random.default_rng(0).integers(-2, 3, size=(32, 2))
    steady = world.frames(32)
    shaky = np.stack([np.roll(f, tuple(j), axis=(0, 1)) for f, j in zip(steady, jitter, strict=True)])
    assert mean(score_video(steady, scene, 8.0), "smoothness") > 0.7
    assert mean(score_video(shaky, scene, 8.0), "smoothness") < 0.5


def test_prompt_schedules_are_scored_per_scene():
    one = Scene((ObjectSpec("triangle", "green"),))
    script = [(0.0, one), (3.0, TWO)]
    video = ScriptedWorld(script, seed=3).frames(48)
    results = score_video(video, script, fps=8.0)
    assert [(r["start"], r["end"]) for r in results] == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert min(r["presence"] for r in results) > 0.8
    assert mean(score_video(video, [(0.0, TWO), (3.0, one)], fps=8.0), "presence") < 0.2
    with pytest.raises(ValueError, match="time 0"):
        score_video(video, [(1.0, one)], fps=8.0)


def test_a_minute_scores_in_well_under_ten_seconds():
    video = World(TWO, 0).frames(480)
    began = time.perf_counter()
    results = score_video(video, TWO, fps=8.0)
    assert time.perf_counter() - began < 5
    assert len(results) == 30
