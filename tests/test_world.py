"""The procedural world: deterministic per seed, resumable, stays in frame, switches on time; captions parse."""

from dataclasses import replace

import numpy as np
import pytest

from training.world.scenes import (
    COLOURS,
    SHAPES,
    ObjectSpec,
    Scene,
    ScriptedWorld,
    World,
    body_mask,
    parse_caption,
    random_scene,
    render_clip,
)

RED_CIRCLE = Scene((ObjectSpec("circle", "red"),))
TWO = Scene((ObjectSpec("square", "blue"), ObjectSpec("triangle", "yellow")))


def colour_pixels(frames: np.ndarray, colour: str) -> np.ndarray:
    """[T] pixels of exactly a world colour in each frame."""
    return (frames == np.array(COLOURS[colour], dtype=np.uint8)).all(-1).sum((1, 2))


def test_same_seed_same_frames_other_seed_differs():
    a, b, c = (World(TWO, seed).frames(24) for seed in (7, 7, 8))
    assert a.shape == (24, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(render_clip(TWO, 7, 24), a)
    np.testing.assert_array_equal(render_clip(TWO, 7, 5, start=19), a[19:])  # a later stretch of the same motion


def test_frames_continue_where_they_stopped():
    world = World(TWO, seed=3, size=48, fps=12.0)
    halves = np.concatenate([world.frames(5), world.frames(5)])
    np.testing.assert_array_equal(halves, World(TWO, seed=3, size=48, fps=12.0).frames(10))
    assert halves.shape == (10, 48, 48, 3)


def test_objects_move_bounce_and_stay_inside():
    rng = np.random.default_rng(0)
    for seed in range(10):
        world = World(random_scene(rng, max_objects=3), seed)
        start = world.bodies
        flips = 0
        for _ in range(120):
            before = world.bodies
            frame = world.frames(1)[0]
            for body in before:
                assert body.radius <= body.x <= 32 - body.radius and body.radius <= body.y <= 32 - body.radius
                assert body_mask(body, 32).sum() >= 16  # whole shapes, never cut by the frame
            assert sum(colour_pixels(frame[None], o.colour)[0] for o in world.scene.objects) > 0
            flips += sum((b.vx * a.vx < 0) + (b.vy * a.vy < 0) for a, b in zip(before, world.bodies, strict=True))
        assert flips > 0  # 120 frames at 1.5..3 px/frame in a 32 px box must hit a wall
        assert all(abs(a.x - b.x) + abs(a.y - b.y) > 0 for a, b in zip(start, world.bodies, strict=True))


def test_speed_and_size_scale_with_frame_size_and_fps():
    small, large = World(RED_CIRCLE, 0).bodies[0], World(RED_CIRCLE, 0, size=64, fps=16.0).bodies[0]
    assert large.radius == pytest.approx(2 * small.radius)
    assert np.hypot(large.vx, large.vy) == pytest.approx(np.hypot(small.vx, small.vy))  # x2 for size, /2 for fps


def test_later_objects_are_drawn_over_earlier_ones():
    world = World(Scene((ObjectSpec("square", "red"), ObjectSpec("circle", "green"))), seed=0)
    world.bodies = tuple(replace(b, x=16.0, y=16.0, vx=0.0, vy=0.0) for b in world.bodies)
    frame = world.frames(1)[0]
    np.testing.assert_array_equal(frame[16, 16], COLOURS["green"])


def test_scripted_world_switches_scene_at_the_scripted_time():
    script = [(0.0, RED_CIRCLE), (1.5, TWO)]
    world = ScriptedWorld(script, seed=5, fps=8.0)
    frames = world.frames(24)  # 3 s; the switch is at frame 12
    assert (colour_pixels(frames[:12], "red") > 0).all()
    assert (colour_pixels(frames[:12], "blue") == 0).all() and (colour_pixels(frames[:12], "yellow") == 0).all()
    assert (colour_pixels(frames[12:], "red") == 0).all()
    assert (colour_pixels(frames[12:], "blue") > 0).all() and (colour_pixels(frames[12:], "yellow") > 0).all()
    assert world.caption_at(1.49) == "a red circle bouncing"
    assert world.caption_at(1.5) == world.caption_at(30.0) == "a blue square and a yellow triangle bouncing"
    skipped = ScriptedWorld(script, seed=5, fps=8.0)
    skipped.skip(10)  # across the switch, undrawn
    np.testing.assert_array_equal(skipped.frames(14), frames[10:])
    plain = World(RED_CIRCLE, seed=5)
    plain.skip(24)
    kept = world.bodies[0]  # the first object of the new scene carries on the red circle's motion
    assert (kept.spec, kept.x, kept.y) == (TWO.objects[0], plain.bodies[0].x, plain.bodies[0].y)


def test_scripts_must_start_at_zero_and_increase():
    with pytest.raises(ValueError, match="time 0"):
        ScriptedWorld([(1.0, RED_CIRCLE)], seed=0)
    with pytest.raises(ValueError, match="increase"):
        ScriptedWorld([(0.0, RED_CIRCLE), (2.0, TWO), (1.0, RED_CIRCLE)], seed=0)


def test_captions():
    three = Scene((ObjectSpec("circle", "red"), ObjectSpec("square", "blue"), ObjectSpec("triangle", "white")))
    assert RED_CIRCLE.caption == "a red circle bouncing"
    assert TWO.caption == "a blue square and a yellow triangle bouncing"
    assert three.caption == "a red circle, a blue square and a white triangle bouncing"
    assert parse_caption("A Blue Square and a YELLOW triangle") == TWO


def test_captions_round_trip_for_random_scenes():
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, max_objects=3) for _ in range(300)]
    assert all(parse_caption(s.caption) == s for s in scenes)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert all(len({o.colour for o in s.objects}) == len(s.objects) for s in scenes)


@pytest.mark.parametrize(
    "caption, message",
    [
        ("a purple circle bouncing", "unknown colour 'purple'"),
        ("a red circle and a green hexagon bouncing", "unknown shape 'hexagon'"),
        ("a red bouncing", "cannot read 'a red'"),
        ("a red circle and a red square bouncing", "distinct"),
        ("", "cannot read"),
    ],
)
def test_unknown_words_raise(caption, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(caption)
