"""A probe that knows the world: it segments frames into coloured shapes and scores videos against captions."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from training.world.scenes import BACKGROUND, COLOURS, SHAPES, Scene, first_frame, shape_mask

NAMES: tuple[str, ...] = ("background", *COLOURS)  # palette entry names; entry 0 is the background
PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # [P, 3]
COLOUR_TOLERANCE = 80.0  # RGB distance within which a pixel is read as a palette entry (entries are >= 175 apart)
BACKGROUND_TOLERANCE = 30.0  # RGB distance within which a pixel outside blobs counts as clean background
MIN_AREA = 8  # components smaller than this at 32 x 32 (scaled with the frame area) are noise
TEMPLATE_SLACK = (-0.375, -0.125, 0.125, 0.375)  # pixels added to a template's radii
SHAPE_MIN_IOU = 0.6  # a blob whose best shape template overlaps it less than this is "unknown"
ABRUPTNESS_FLOOR = 1.0  # grey levels
HARD_STEP = np.linalg.norm(PALETTE - PALETTE[0], axis=-1)  # [P]: RGB step of a hard edge onto the background
_GAPS = np.linalg.norm(PALETTE[:, None] - PALETTE[None], axis=-1) + np.diag(np.full(len(PALETTE), np.inf))  # [P, P]
DRIFT_SCALE = dict(zip(NAMES, _GAPS.min(1) / 2, strict=True))  # drift at which a colour is halfway to another


@dataclass(frozen=True)
class Blob:
    """A connected region of one world colour, classified as a shape of SHAPES or "unknown"."""

    colour: str
    shape: str
    area: int  # pixels
    centroid: tuple[float, float]  # (x, y) in world coordinates: pixel i spans [i, i + 1)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive pixel indices


@dataclass(frozen=True)
class _Components:
    """The kept components of a stack of frames, numbered k = 0..K-1, as arrays."""

    index: np.ndarray  # [T, H, W] int: the component k a pixel belongs to, -1 outside every kept component
    frame: np.ndarray  # [K] int
    colour: np.ndarray  # [K] int: palette entry (>= 1)
    shape: np.ndarray  # [K] int: index into SHAPES, -1 for "unknown"
    area: np.ndarray  # [K] int
    centroid: np.ndarray  # [K, 2] float: (x, y)
    bbox: np.ndarray  # [K, 4] int: (x0, y0, x1, y1)
    rgb: np.ndarray  # [K, 3] float: mean colour
    touching: np.ndarray  # [K] bool: 4-adjacent to another kept component

    def blob(self, k: int) -> Blob:
        shape = SHAPES[self.shape[k]] if self.shape[k] >= 0 else "unknown"
        x, y = self.centroid[k]
        return Blob(NAMES[self.colour[k]], shape, int(self.area[k]), (float(x), float(y)), tuple(self.bbox[k].tolist()))


def classify_pixels(frames: np.ndarray) -> np.ndarray:
    """[..., H, W] int: the nearest palette entry of each pixel of [..., H, W, 3], or -1 if none is near."""
    distance = np.linalg.norm(frames[..., None, :].astype(np.float32) - PALETTE, axis=-1)  # [..., H, W, P]
    return np.where(distance.min(-1) <= COLOUR_TOLERANCE, distance.argmin(-1), -1)


def label_components(classes: np.ndarray) -> np.ndarray:
    """[T, H, W] int: for pixels of an object colour (class >= 1), the smallest flat index of their 4-connected
    same-class component; T*H*W elsewhere. Min-label propagation with pointer jumping, all frames at once."""
    t, h, w = classes.shape
    none = t * h * w
    inside = classes >= 1  # [T, H, W]
    right = inside[:, :, :-1] & (classes[:, :, :-1] == classes[:, :, 1:])  # [T, H, W-1]: linked to the right
    down = inside[:, :-1] & (classes[:, :-1] == classes[:, 1:])  # [T, H-1, W]: linked below
    labels = np.where(inside, np.arange(none).reshape(t, h, w), none)  # [T, H, W]
    while True:
        new = labels.copy()
        new[:, :, :-1] = np.where(right, np.minimum(new[:, :, :-1], labels[:, :, 1:]), new[:, :, :-1])
        new[:, :, 1:] = np.where(right, np.minimum(new[:, :, 1:], labels[:, :, :-1]), new[:, :, 1:])
        new[:, :-1] = np.where(down, np.minimum(new[:, :-1], labels[:, 1:]), new[:, :-1])
        new[:, 1:] = np.where(down, np.minimum(new[:, 1:], labels[:, :-1]), new[:, 1:])
        flat = new.reshape(-1)  # a label is a pixel of the same component: jump to that pixel's label
        linked = flat < none
        flat[linked] = flat[flat[linked]]
        if np.array_equal(new, labels):
            return labels
        labels = new


@functools.lru_cache(maxsize=4096)
def _templates(h: int, w: int) -> np.ndarray:
    """[len(SHAPES), len(TEMPLATE_SLACK), h, w] bool: each world shape centred on an h x w box, its radii the
    box's half-sides plus a slack, sampled at pixel centres as the world renders (a shape of radius r covers
    a box of 2r - 1 to 2r + 1 pixels, and e.g. a wide circle in a small box looks nearly square)."""
    dx = np.arange(w) + 0.5 - w / 2  # [w]
    dy = np.arange(h) + 0.5 - h / 2  # [h]
    return np.stack([
        np.stack([shape_mask(shape, dx[None, :] / (w / 2 + s), dy[:, None] / (h / 2 + s), 1.0) for s in TEMPLATE_SLACK])
        for shape in SHAPES
    ])


def _boxes(mask: np.ndarray, hidden: np.ndarray | None) -> list[tuple[int, int, int, int]]:
    """Candidate boxes (y0, y1, x0, x1), ends exclusive, of the shape behind a mask: its bounding box and, if
    other blobs may hide part of it, square boxes (world shapes are as wide as tall) that grow into hidden pixels."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    boxes = [(y0, y1, x0, x1)]
    if hidden is None or not hidden.any():
        return boxes
    h, w = mask.shape
    for side in (max(y1 - y0, x1 - x0), max(y1 - y0, x1 - x0) + 1):
        for top in range(max(0, y1 - side), min(y0, h - side) + 1):
            for left in range(max(0, x1 - side), min(x0, w - side) + 1):
                if hidden[top : top + side, left : left + side].any():
                    boxes.append((top, top + side, left, left + side))
    return boxes


def classify_shape(mask: np.ndarray, hidden: np.ndarray | None = None) -> int:
    """Index into SHAPES of the world shape whose template best overlaps a [H, W] mask (IoU), -1 if none fits.

    `hidden` marks pixels other blobs cover: template pixels there count neither for nor against a shape."""
    best = np.zeros(len(SHAPES))
    for y0, y1, x0, x1 in _boxes(mask, hidden):
        crop = mask[y0:y1, x0:x1]  # [h, w]
        care = ~hidden[y0:y1, x0:x1] if hidden is not None else np.ones_like(crop)
        templates = _templates(y1 - y0, x1 - x0)  # [S, V, h, w]
        iou = (templates & crop).sum((2, 3)) / ((templates | crop) & care).sum((2, 3))  # [S, V]
        best = np.maximum(best, iou.max(1))
    return int(best.argmax()) if best.max() >= SHAPE_MIN_IOU else -1


def _shapes(index: np.ndarray, frame: np.ndarray, touching: np.ndarray) -> np.ndarray:
    """[K] int: the shape of each component of index [T, H, W]; components touching it may hide part of it."""
    shapes = []
    for k, (f, contact) in enumerate(zip(frame, touching, strict=True)):
        mask = index[f] == k  # [H, W]
        shapes.append(classify_shape(mask, (index[f] >= 0) & ~mask if contact else None))
    return np.array(shapes, dtype=int)


def _components(frames: np.ndarray) -> _Components:
    """Segment [T, H, W, 3] uint8 frames into kept components (area >= MIN_AREA, scaled with the frame area)."""
    t, h, w, _ = frames.shape
    classes = classify_pixels(frames).reshape(-1)  # [T*H*W]
    labels = label_components(classes.reshape(t, h, w)).reshape(-1)  # [T*H*W]
    pixels = np.flatnonzero(labels < t * h * w)  # [N] object pixels
    roots, member = np.unique(labels[pixels], return_inverse=True)  # member: [N] into roots
    kept = np.bincount(member, minlength=len(roots)) >= max(3, round(MIN_AREA * h * w / 32**2))  # [roots]
    renumber = np.where(kept, np.cumsum(kept) - 1, -1)  # [roots]: component k or -1
    index = np.full(t * h * w, -1)
    index[pixels] = renumber[member]
    pixels = pixels[index[pixels] >= 0]  # [N'] pixels of kept components
    k, n = index[pixels], int(kept.sum())  # [N'], K
    f, y, x = np.unravel_index(pixels, (t, h, w))  # [N'] each
    frame, colour = np.zeros(n, dtype=int), np.zeros(n, dtype=int)  # [K]
    frame[k], colour[k] = f, classes[pixels]
    area = np.bincount(k, minlength=n)  # [K]
    bbox = np.stack([np.full(n, w), np.full(n, h), np.full(n, -1), np.full(n, -1)], axis=1)  # [K, 4]
    for column, values, reduce in ((0, x, np.minimum), (1, y, np.minimum), (2, x, np.maximum), (3, y, np.maximum)):
        reduce.at(bbox[:, column], k, values)
    index = index.reshape(t, h, w)
    touching = np.zeros(n, dtype=bool)  # [K]
    for a, b in ((index[:, :, :-1], index[:, :, 1:]), (index[:, :-1], index[:, 1:])):
        meet = (a >= 0) & (b >= 0) & (a != b)
        touching[a[meet]] = touching[b[meet]] = True
    return _Components(
        index=index,
        frame=frame,
        colour=colour,
        shape=_shapes(index, frame, touching),
        area=area,
        centroid=np.stack([np.bincount(k, x + 0.5, n), np.bincount(k, y + 0.5, n)], axis=1) / area[:, None],
        bbox=bbox,
        rgb=np.stack([np.bincount(k, frames.reshape(-1, 3)[pixels, c], n) for c in range(3)], 1) / area[:, None],
        touching=touching,
    )


def segment(frame: np.ndarray) -> list[Blob]:
    """The blobs of one [H, W, 3] uint8 frame: connected regions of one world colour, noise specks dropped."""
    found = _components(frame[None])
    return [found.blob(k) for k in range(len(found.frame))]


def _take(values: np.ndarray, which: np.ndarray, fill: float) -> np.ndarray:
    """values[which] ([K, ...] by an index array), with `fill` where the index is -1."""
    padded = np.concatenate([values.astype(float), np.full((1, *values.shape[1:]), fill)])  # [K+1, ...]
    return padded[which]


def _objects(found: _Components, expected: Scene, frames: int) -> np.ndarray:
    """[T, E] int: each expected object's blob per frame, the largest blob of its colour, or -1.

    The probe names objects by colour, which a scene keeps distinct."""
    which = np.full((frames, len(expected.objects)), -1)
    slot = {NAMES.index(o.colour): e for e, o in enumerate(expected.objects)}
    for k in np.argsort(found.area, kind="stable"):  # larger blobs overwrite smaller ones
        if (e := slot.get(int(found.colour[k]))) is not None:
            which[found.frame[k], e] = k
    return which


def _presence(found: _Components, which: np.ndarray, expected: Scene) -> float:
    """Fraction of frames in which every expected object is found with its colour and shape."""
    shapes = np.array([SHAPES.index(o.shape) for o in expected.objects])  # [E]
    return float((_take(found.shape, which, -1) == shapes).all(1).mean())


def _count_stability(found: _Components, frames: int, expected: Scene) -> float:
    """1 - sqrt(mean_t (n_t - E)^2) / E, clipped to [0, 1], with n_t the blobs in frame t and E the objects expected:
    the root mean square of the count's std and bias, so 1 means the count is constant and right."""
    error = np.bincount(found.frame, minlength=frames) - len(expected.objects)  # [T]
    return float(np.clip(1 - np.sqrt(np.mean(error**2)) / len(expected.objects), 0, 1))


def _size_stability(found: _Components, which: np.ndarray) -> float:
    """1 - the mean over objects of the coefficient of variation (std / mean) of the blob's area, clipped to [0, 1].

    Frames where the blob touches another are left out (occlusion shrinks it); an object never found counts as
    variation 1, one only ever seen in contact is skipped (nan if all are)."""
    areas = _take(found.area, which, np.nan)  # [T, E]
    free = ~np.isnan(areas) & ~(_take(found.touching, which, 0) > 0)  # [T, E]: found, not in contact
    variation = [
        np.std(a[f]) / np.mean(a[f]) if f.any() else 1.0  # never found: 1
        for a, f in zip(areas.T, free.T, strict=True)
        if f.any() or np.isnan(a).all()  # only ever seen in contact: skipped
    ]
    return float(np.clip(1 - np.mean(variation), 0, 1)) if variation else float("nan")


def _smoothness(found: _Components, which: np.ndarray, size: tuple[int, int]) -> float:
    """1 / (1 + mean |a|), a = c[t+1] - 2 c[t] + c[t-1] the centroid acceleration per axis in px/frame^2.

    Free flight only: samples where the blob is within (speed + 1) px of a wall on that axis (a bounce) or touches
    another blob in any of the three frames (occlusion moves the centroid) are skipped; nan if none is left.
    Ground truth scores about 0.7 (squares) to 0.87 (circles): centroids of small hard-edged shapes wobble.
    """
    centroid = _take(found.centroid, which, np.nan)  # [T, E, 2]
    bbox = _take(found.bbox, which, np.nan)  # [T, E, 4]
    touching = _take(found.touching, which, 0) > 0  # [T, E]
    velocity = np.diff(centroid, axis=0)  # [T-1, E, 2]
    acceleration = np.abs(np.diff(velocity, axis=0))  # [T-2, E, 2], at frames 1..T-2
    margin = np.maximum(np.abs(velocity[:-1]), np.abs(velocity[1:])) + 1  # [T-2, E, 2]
    low, high = bbox[1:-1, :, :2], np.array([size[1] - 1, size[0] - 1]) - bbox[1:-1, :, 2:]  # [T-2, E, 2]: to walls
    near_wall = (low < margin) | (high < margin)
    contact = touching[:-2] | touching[1:-1] | touching[2:]  # [T-2, E]
    free = ~np.isnan(acceleration) & ~near_wall & ~contact[..., None]
    return float(1 / (1 + acceleration[free].mean())) if free.any() else float("nan")


def _background_clean(frames: np.ndarray, found: _Components) -> float:
    """Fraction of the pixels outside blobs within BACKGROUND_TOLERANCE of the world's background."""
    outside = frames[found.index < 0].astype(np.float32)  # [N, 3]
    if not len(outside):
        return float("nan")
    return float((np.linalg.norm(outside - PALETTE[0], axis=-1) <= BACKGROUND_TOLERANCE).mean())


def _sharpness(frames: np.ndarray, found: _Components) -> float:
    """Mean over blob edge pixels (a 4-neighbour outside every blob) of the largest RGB step to such a neighbour
    over the hard-edge step |object colour - background|, each clipped to 1; nan without blobs."""
    t, h, w, _ = frames.shape
    index = np.pad(found.index, ((0, 0), (1, 1), (1, 1)), constant_values=-2)  # [T, H+2, W+2]; -2 off the frame
    image = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))  # [T, H+2, W+2, 3]
    inside, centre = index[:, 1:-1, 1:-1], image[:, 1:-1, 1:-1]  # [T, H, W], [T, H, W, 3]
    step = np.zeros((t, h, w), dtype=np.float32)
    edge = np.zeros((t, h, w), dtype=bool)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        outward = (inside >= 0) & (index[:, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] == -1)  # [T, H, W]
        jump = np.linalg.norm(image[:, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] - centre, axis=-1)  # [T, H, W]
        step = np.where(outward, np.maximum(step, jump), step)
        edge |= outward
    if not edge.any():
        return float("nan")
    return float(np.clip(step[edge] / HARD_STEP[found.colour[inside[edge]]], 0, 1).mean())


def _colour_stats(frames: np.ndarray, found: _Components, which: np.ndarray, expected: Scene) -> dict[str, tuple]:
    """Mean RGB of each expected object found (by colour name) and of the pixels outside blobs ("background")."""
    stats = {}
    for e, obj in enumerate(expected.objects):
        blobs = which[:, e][which[:, e] >= 0]
        if len(blobs):
            stats[obj.colour] = tuple(np.average(found.rgb[blobs], axis=0, weights=found.area[blobs]).tolist())
    outside = frames[found.index < 0]  # [N, 3]
    if len(outside):
        stats["background"] = tuple(outside.mean(0).tolist())
    return stats


def _colour_drift(stats: dict[str, tuple], reference: dict[str, tuple] | None) -> float:
    """1 - the mean over names in both stats and reference of |mean RGB - reference mean RGB| / DRIFT_SCALE, each
    clipped to 1: 1 means no drift (or nothing to compare), 0 that colours went halfway to other palette entries."""
    common = [name for name in stats if name in (reference or {})]
    if not common:
        return 1.0
    drift = [min(1.0, float(np.linalg.norm(np.subtract(stats[n], reference[n]))) / DRIFT_SCALE[n]) for n in common]
    return 1 - float(np.mean(drift))


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change [T-1] from each frame of [T, H, W, 3] to the next, in grey levels."""
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean((1, 2, 3))


def _abruptness(frames: np.ndarray, previous_frame: np.ndarray | None) -> float:
    """Largest frame-to-frame mean absolute change over the median one (floored at ABRUPTNESS_FLOOR grey levels, so
    a still video does not divide by zero); about 1 for steady motion, a spike marks a seam. Lower is better."""
    clip = frames if previous_frame is None else np.concatenate([previous_frame[None], frames])  # [T', H, W, 3]
    change = frame_changes(clip)  # [T'-1]
    return float(change.max() / max(float(np.median(change)), ABRUPTNESS_FLOOR)) if len(change) else float("nan")


def score_segment(
    frames: np.ndarray, expected: Scene, reference: dict[str, tuple] | None = None,
    previous_frame: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, tuple]]:
    """Score one segment of [T, H, W, 3] uint8 frames that should show `expected`: (metrics, stats).

    metrics: presence, count_stability, size_stability, smoothness, background_clean, sharpness and colour_drift in
    [0, 1], 1 perfect, nan when the segment offers no sample; abruptness >= 0, lower is better. Each is defined by
    the function of its name. stats: {colour name or "background": mean RGB}, the `reference` for later segments.
    previous_frame [H, W, 3], the frame before the segment, lets abruptness see the step into it.
    """
    found = _components(frames)
    which = _objects(found, expected, len(frames))  # [T, E]
    stats = _colour_stats(frames, found, which, expected)
    metrics = {
        "presence": _presence(found, which, expected),
        "count_stability": _count_stability(found, len(frames), expected),
        "size_stability": _size_stability(found, which),
        "smoothness": _smoothness(found, which, frames.shape[1:3]),
        "background_clean": _background_clean(frames, found),
        "sharpness": _sharpness(frames, found),
        "colour_drift": _colour_drift(stats, reference),
        "abruptness": _abruptness(frames, previous_frame),
    }
    return metrics, stats


def score_video(
    frames: np.ndarray, expected: Scene | list[tuple[float, Scene]], fps: float, segment_seconds: float = 2.0
) -> list[dict[str, float]]:
    """Metrics of each segment of a [T, H, W, 3] uint8 video, with its "start" and "end" in seconds.

    `expected` is one scene or a prompt schedule [(start seconds, scene)] starting at 0; segments are cut every
    segment_seconds and at every scene change, so none straddles two scenes. Colour drift is measured against
    the first segment an object (or the background) is seen in; abruptness includes the step into each segment.
    """
    script = [(0.0, expected)] if isinstance(expected, Scene) else list(expected)
    if not script or script[0][0] != 0:
        raise ValueError("a prompt schedule starts with a scene at time 0")
    bounds = [min(first_frame(start, fps), len(frames)) for start, _ in script] + [len(frames)]
    length = max(1, round(segment_seconds * fps))
    results, reference = [], None
    for (_, scene), begin, end in zip(script, bounds, bounds[1:], strict=False):
        for start in range(begin, end, length):
            stop = min(start + length, end)
            previous = frames[start - 1] if start else None
            metrics, stats = score_segment(frames[start:stop], scene, reference, previous)
            reference = {**stats, **(reference or {})}
            results.append({"start": start / fps, "end": stop / fps, **metrics})
    return results
