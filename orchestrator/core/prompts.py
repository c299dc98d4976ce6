"""Prompt schedules: 'SECONDS:TEXT' entries, each prompt active from its start time until the next."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from orchestrator.core.errors import UserError
from orchestrator.core.frames import FrameCount

MAX_PROMPT_CHARS = 2000
ESCAPE_HINT = "a prompt that itself starts with a number and a colon is written with its time, e.g. '0:12:30 meeting'"


def split_entry(entry: str) -> tuple[float, str]:
    """'SECONDS:TEXT' -> (SECONDS, TEXT) when the part before the first colon is a number; else (0, entry)."""
    head, colon, text = entry.partition(":")
    try:
        start = float(head) if colon and head.strip() else None
    except ValueError:
        start = None
    if start is None:
        return 0.0, entry.strip()
    if not math.isfinite(start) or start < 0:
        raise UserError(f"prompt '{entry[:60]}' starts at {head.strip()} s; a start time is a finite number of "
                        f"seconds >= 0 ({ESCAPE_HINT})")
    return start, text.strip()


def timed_entry(start: float, text: str) -> str:
    """The entry 'SECONDS:TEXT' that parses back to exactly (start, text): the time in its shortest exact form."""
    return f"{start!r}:{text}"


def with_prompt(entries: list[str], start: float, text: str) -> list[str]:
    """A schedule's entries with `text` active from `start` until the next later entry (one at `start` replaced)."""
    kept = [entry for entry in entries if split_entry(entry)[0] != start]
    return sorted([*kept, timed_entry(start, text)], key=lambda entry: split_entry(entry)[0])


@dataclass(frozen=True)
class PromptSchedule:
    """Start times (seconds, ascending, the first 0) and their prompts."""

    starts: tuple[float, ...]
    texts: tuple[str, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> PromptSchedule:
        """'0:a red circle', '20:a green square'; a plain 'TEXT' starts at 0."""
        timed = []
        for entry in entries:
            start, text = split_entry(entry)
            if not text:
                raise UserError(f"empty prompt in '{entry}'")
            if len(text) > MAX_PROMPT_CHARS:
                raise UserError(f"prompt longer than {MAX_PROMPT_CHARS} characters")
            timed.append((start, text))
        if not timed:
            raise UserError("at least one prompt is required")
        timed.sort(key=lambda item: item[0])
        starts = [start for start, _ in timed]
        if len(set(starts)) != len(starts):
            raise UserError(f"two prompts start at the same time: {entries}")
        if starts[0] != 0:
            raise UserError(f"the first prompt must start at 0 seconds, not {starts[0]:g} ({ESCAPE_HINT})")
        return cls(tuple(starts), tuple(text for _, text in timed))

    def at(self, seconds: float) -> str:
        """The prompt active at a time in the video."""
        return self.texts[bisect_right(self.starts, seconds) - 1]


@dataclass(frozen=True)
class ChunkPrompts:
    """The prompt of chunk m: the one active when its first frame is shown."""

    schedule: PromptSchedule
    frames: FrameCount
    chunk: int  # latent frames per chunk
    fps: float

    def of(self, m: int) -> str:
        return self.schedule.at(self.start_seconds(m))

    def start_seconds(self, m: int) -> float:
        """When chunk m's first frame is shown."""
        return self.frames.video_frames(m * self.chunk) / self.fps

    def never_shown(self, num_chunks: int) -> list[str]:
        """One line for each schedule entry that conditions none of the video's chunks."""
        used = {bisect_right(self.schedule.starts, self.start_seconds(m)) - 1 for m in range(num_chunks)}
        last = self.start_seconds(num_chunks - 1)
        return [f"prompt '{text[:60]}' at {start:g} s never shows: "
                + (f"the last chunk starts at {last:g} s" if start > last else "no chunk starts before the next prompt")
                for i, (start, text) in enumerate(zip(self.schedule.starts, self.schedule.texts, strict=True))
                if i not in used]
