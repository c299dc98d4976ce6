"""The rules every entry point (CLI, batch rows, the HTTP API) applies to what a user asks for."""

from __future__ import annotations

import math
import re

from orchestrator.core.errors import UserError

MAX_SEED = 2**63 - 1  # seeds are stored as int64 (manifests, checkpoints)
MAX_FPS = 240.0  # frames per second: beyond any video format's use, and keeps frame counts finite
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RUN_ID_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def seed_value(value: object) -> int:
    """A seed as an int: a whole number in 0..MAX_SEED (an integral float or a string of digits counts)."""
    seed = None
    if isinstance(value, int) and not isinstance(value, bool):
        seed = value
    elif isinstance(value, float) and value.is_integer():
        seed = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        seed = int(value.strip())
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be a whole number in 0..{MAX_SEED}, got {str(value)[:40]!r}")
    return seed


def check_run_id(run_id: str, what: str = "run id") -> str:
    """A run id names one folder directly under the runs root: no separators, no '..', no hidden names."""
    if not RUN_ID.match(run_id):
        raise UserError(f"{what} '{run_id[:60]}' must be {RUN_ID_RULE}")
    return run_id


def check_seconds(seconds: float, max_seconds: float, bound_key: str) -> float:
    """A video length in (0, max_seconds]; the message names the setting that holds the bound."""
    if not math.isfinite(seconds) or not seconds > 0:
        raise UserError(f"seconds must be > 0, got {seconds}")
    if seconds > max_seconds:
        raise UserError(f"seconds must be at most {max_seconds:g} ({bound_key}), got {seconds:g}")
    return seconds


def check_length(seconds: float, fps: float, max_seconds: float, bound_key: str) -> int:
    """The frame count of a video of `seconds` at `fps`, within the bound named by `bound_key`."""
    if not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise UserError(f"fps must be > 0 and at most {MAX_FPS:g}, got {fps:g}")
    check_seconds(seconds, max_seconds, bound_key)
    frames = round(seconds * fps)
    if frames < 1:
        raise UserError(f"{seconds:g} seconds at {fps:g} fps is less than one frame")
    return frames
