"""A procedural, seeded, endless world of coloured shapes bouncing on a dark background, with captions."""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 50),
    "blue": (30, 40, 240),
    "yellow": (235, 215, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 215, 225),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (14, 14, 18)
BACKGROUND_SWING = 3  # the background brightness drifts by at most this many levels ...
BACKGROUND_PERIOD = 10.0  # ... with this period in seconds: plain but slowly changing
REFERENCE_SIZE = 32  # object radii and speeds below are in pixels of a frame this size
RADIUS_RANGE = (4.0, 6.0)  # radius of a circle, half-side of a square, half-base and half-height of a triangle
SPEED_RANGE = (1.5, 3.0)  # pixels per frame at REFERENCE_FPS
REFERENCE_FPS = 8.0


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene: a shape in a colour; an unknown word fails with the words it knows."""

    shape: str
    colour: str

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; the world knows {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; the world knows {', '.join(SHAPES)}")


@dataclass(frozen=True)
class Scene:
    """The objects on screen, drawn in order; colours are distinct so that a colour names an object."""

    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"colours must be distinct within a scene, got {colours}")

    @property
    def caption(self) -> str:
        """'a red circle bouncing', 'a red circle and a blue square bouncing', 'a ..., a ... and a ... bouncing'."""
        parts = [f"a {o.colour} {o.shape}" for o in self.objects]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed} bouncing"


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (inverse of Scene.caption); any case, the trailing 'bouncing' optional."""
    words = text.strip().rstrip(".").lower()
    words = re.sub(r"\s+bouncing$", "", words)
    objects = []
    for part in re.split(r",|\band\b", words):
        tokens = part.split()
        if tokens[:1] in (["a"], ["an"]):
            tokens = tokens[1:]
        if len(tokens) != 2:
            raise ValueError(f"cannot read {part.strip()!r} in caption {text!r}; expected 'a <colour> <shape>'")
        objects.append(ObjectSpec(shape=tokens[1], colour=tokens[0]))
    return Scene(tuple(objects))


def random_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    """A scene of 1..max_objects objects with distinct colours and any shapes."""
    if not 1 <= max_objects <= len(COLOURS):
        raise ValueError(f"max_objects must be in 1..{len(COLOURS)}, got {max_objects}")
    count = int(rng.integers(1, max_objects + 1))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    shapes = rng.choice(SHAPES, size=count)
    return Scene(tuple(ObjectSpec(shape=str(s), colour=str(c)) for s, c in zip(shapes, colours, strict=True)))


@dataclass(frozen=True)
class Body:
    """An object in motion: centre (x, y) and velocity in pixels (pixel i spans [i, i + 1)), radius r."""

    spec: ObjectSpec
    radius: float
    x: float
    y: float
    vx: float  # pixels per frame
    vy: float


def spawn(spec: ObjectSpec, rng: np.random.Generator, size: int, fps: float) -> Body:
    """A body of random radius, position inside the frame and velocity in a random direction."""
    scale = size / REFERENCE_SIZE
    radius = rng.uniform(*RADIUS_RANGE) * scale
    x, y = rng.uniform(radius, size - radius, size=2)
    speed = rng.uniform(*SPEED_RANGE) * scale * REFERENCE_FPS / fps
    angle = rng.uniform(0, 2 * math.pi)
    return Body(spec, radius, float(x), float(y), speed * math.cos(angle), speed * math.sin(angle))


def _bounce(position: float, velocity: float, radius: float, size: int) -> tuple[float, float]:
    """One axis of one step: move, mirror at a wall the shape crossed and reverse, then clamp inside."""
    position += velocity
    if position - radius < 0:
        position, velocity = 2 * radius - position, abs(velocity)
    elif position + radius > size:
        position, velocity = 2 * (size - radius) - position, -abs(velocity)
    return min(max(position, radius), size - radius), velocity


def step(body: Body, size: int) -> Body:
    """The body one frame later: straight motion, reflected off the walls."""
    x, vx = _bounce(body.x, body.vx, body.radius, size)
    y, vy = _bounce(body.y, body.vy, body.radius, size)
    return replace(body, x=x, y=y, vx=vx, vy=vy)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
    """Which points (offsets dx, dy from the centre) a shape covers; the triangle is upright, apex at the top."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    return (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)  # base 2r at dy = r, apex at dy = -r


def body_mask(body: Body, size: int) -> np.ndarray:
    """[size, size] bool: the pixels whose centres the body covers (hard edges)."""
    centres = np.arange(size) + 0.5  # [size]
    return shape_mask(body.spec.shape, centres[None, :] - body.x, centres[:, None] - body.y, body.radius)


def background_at(frame: int, fps: float, phase: float) -> np.ndarray:
    """[3] uint8: the background colour at a frame, BACKGROUND brightened or darkened by a slow sine."""
    swing = round(BACKGROUND_SWING * math.sin(2 * math.pi * frame / (fps * BACKGROUND_PERIOD) + phase))
    return (np.array(BACKGROUND) + swing).astype(np.uint8)


def render(bodies: tuple[Body, ...], size: int, background: np.ndarray) -> np.ndarray:
    """[size, size, 3] uint8: the bodies over the background, later bodies over earlier ones."""
    frame = np.broadcast_to(background, (size, size, 3)).copy()  # [H, W, 3]
    for body in bodies:
        frame[body_mask(body, size)] = COLOURS[body.spec.colour]
    return frame


def first_frame(seconds: float, fps: float) -> int:
    """Index of the first frame shown at or after a time (frame k is shown at k / fps)."""
    return math.ceil(seconds * fps - 1e-9)


class ScriptedWorld:
    """An endless video whose scene changes at scripted times; the i-th new object takes over the i-th body's motion."""

    def __init__(self, script: list[tuple[float, Scene]], seed: int, size: int = 32, fps: float = 8.0) -> None:
        if not script or script[0][0] != 0:
            raise ValueError("a script starts with a scene at time 0")
        starts = [start for start, _ in script]
        if starts != sorted(set(starts)):
            raise ValueError(f"script times must increase strictly, got {starts}")
        self.script = list(script)
        self.size = size
        self.fps = fps
        self._rng = np.random.default_rng(seed)
        self._phase = self._rng.uniform(0, 2 * math.pi)
        self._switches = [first_frame(start, fps) for start in starts]
        self._scene_index = 0
        self.frame_index = 0  # the frame that frames() renders next
        self.bodies = tuple(spawn(spec, self._rng, size, fps) for spec in script[0][1].objects)

    def caption_at(self, seconds: float) -> str:
        """The caption of the scene in force at a time."""
        return self.script[_last_at_or_before([start for start, _ in self.script], seconds)][1].caption

    def frames(self, n: int) -> np.ndarray:
        """[n, size, size, 3] uint8: the next n frames; the world moves on, so frames(5) twice equals frames(10)."""
        out = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        for i in range(n):
            out[i] = render(self.bodies, self.size, background_at(self.frame_index, self.fps, self._phase))
            self._move_on()
        return out

    def skip(self, n: int) -> None:
        """Move the world on n frames without drawing them: frames() then goes on as if it had drawn them."""
        for _ in range(n):
            self._move_on()

    def _move_on(self) -> None:
        """One frame later: the bodies step, and the scene in force at the next frame takes over."""
        self.bodies = tuple(step(body, self.size) for body in self.bodies)
        self.frame_index += 1
        self._enter_scene(_last_at_or_before(self._switches, self.frame_index))

    def _enter_scene(self, index: int) -> None:
        """Swap in the objects of scene `index`: existing bodies keep their motion, extra objects spawn fresh."""
        if index == self._scene_index:
            return
        self._scene_index = index
        specs = self.script[index][1].objects
        kept = [replace(body, spec=spec) for body, spec in zip(self.bodies, specs, strict=False)]
        fresh = [spawn(spec, self._rng, self.size, self.fps) for spec in specs[len(kept) :]]
        self.bodies = tuple(kept + fresh)


def _last_at_or_before(starts: list[float], moment: float) -> int:
    """Index of the last start at or before a moment, a frame or a time (starts ascending from 0)."""
    return bisect.bisect_right(starts, moment) - 1


class World(ScriptedWorld):
    """An endless video of one scene: deterministic per (scene, seed)."""

    def __init__(self, scene: Scene, seed: int, size: int = 32, fps: float = 8.0) -> None:
        super().__init__([(0.0, scene)], seed, size, fps)
        self.scene = scene


def render_clip(scene: Scene, seed: int, frames: int, size: int = 32, fps: float = 8.0, start: int = 0
                ) -> np.ndarray:
    """[frames, size, size, 3] uint8: frames start .. start + frames - 1 of World(scene, seed)."""
    world = World(scene, seed, size, fps)
    world.skip(start)
    return world.frames(frames)
