"""Prompt schedules: 'SECONDS:TEXT' entries, each prompt active from its start time until the next, reached at once or
over a transition ('SECONDS+TRANSITION:TEXT')."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from orchestrator.core.errors import UserError
from orchestrator.core.frames import FrameCount

MAX_PROMPT_CHARS = 2000
ESCAPE_HINT = "a prompt that itself starts with a number and a colon is written with its time, e.g. '0:12:30 meeting'"


def _times(head: str) -> tuple[float, float] | None:
    """'SECONDS' or 'SECONDS+TRANSITION' as numbers; None if the head is neither."""
    for start, transition in ((head, "0"), head.rpartition("+")[::2]):
        try:
            return float(start), float(transition)
        except ValueError:
            continue
    return None


def split_entry(entry: str) -> tuple[float, str, float]:
    """'SECONDS:TEXT' or 'SECONDS+TRANSITION:TEXT' -> (SECONDS, TEXT, TRANSITION) when the part before the first
    colon is such a time; else (0, entry, 0)."""
    head, colon, text = entry.partition(":")
    times = _times(head.strip()) if colon and head.strip() else None
    if times is None:
        return 0.0, entry.strip(), 0.0
    start, transition = times
    if not math.isfinite(start) or start < 0 or not math.isfinite(transition) or transition < 0:
        raise UserError(f"prompt '{entry[:60]}' starts at {head.strip()} s; a start time and a transition are finite "
                        f"numbers of seconds >= 0 ({ESCAPE_HINT})")
    return start, text.strip(), transition


def timed_entry(start: float, text: str, transition: float = 0.0) -> str:
    """The entry that parses back to exactly (start, text, transition): the times in their shortest exact form."""
    return f"{start!r}+{transition!r}:{text}" if transition else f"{start!r}:{text}"


def with_prompt(entries: list[str], start: float, text: str, transition: float = 0.0) -> list[str]:
    """A schedule's entries with `text` active from `start` (reached over `transition` seconds, unless it starts the
    video) until the next later entry; one at `start` is replaced."""
    kept = [entry for entry in entries if split_entry(entry)[0] != start]
    added = timed_entry(start, text, transition if start > 0 else 0.0)
    return sorted([*kept, added], key=lambda entry: split_entry(entry)[0])


@dataclass(frozen=True)
class Blend:
    """The conditioning of a moment inside a transition: `weight` (in (0, 1)) of the way from one prompt to the next."""

    before: str
    after: str
    weight: float

    def __str__(self) -> str:
        return f"{self.before} -> {self.after} ({self.weight:.3f})"


@dataclass(frozen=True)
class PromptSchedule:
    """Start times (seconds, ascending, the first 0) and their prompts."""

    starts: tuple[float, ...]
    texts: tuple[str, ...]
    transitions: tuple[float, ...]  # seconds over which each prompt takes over from the one before

    @classmethod
    def parse(cls, entries: list[str]) -> PromptSchedule:
        """'0:a red circle', '20:a green square'; a plain 'TEXT' starts at 0."""
        timed = []
        for entry in entries:
            start, text, transition = split_entry(entry)
            if not text:
                raise UserError(f"empty prompt in '{entry}'")
            if len(text) > MAX_PROMPT_CHARS:
                raise UserError(f"prompt longer than {MAX_PROMPT_CHARS} characters")
            timed.append((start, text, transition))
        if not timed:
            raise UserError("at least one prompt is required")
        timed.sort(key=lambda item: item[0])
        starts = [start for start, _, _ in timed]
        if len(set(starts)) != len(starts):
            raise UserError(f"two prompts start at the same time: {entries}")
        if starts[0] != 0:
            raise UserError(f"the first prompt must start at 0 seconds, not {starts[0]:g} ({ESCAPE_HINT})")
        if timed[0][2]:
            raise UserError("the first prompt has no prompt before it to take over from: it has no transition")
        return cls(tuple(starts), tuple(text for _, text, _ in timed), tuple(t for _, _, t in timed))

    def at(self, seconds: float) -> str | Blend:
        """The prompt active at a time in the video, or within a transition the blend of it with the one before."""
        i = bisect_right(self.starts, seconds) - 1
        into = seconds - self.starts[i]
        if 0 < into < self.transitions[i]:
            return Blend(self.texts[i - 1], self.texts[i], into / self.transitions[i])
        return self.texts[i - 1] if into == 0 < self.transitions[i] else self.texts[i]


@dataclass(frozen=True)
class ChunkPrompts:
    """The prompt of chunk m: the one active when its first frame is shown."""

    schedule: PromptSchedule
    frames: FrameCount
    chunk: int  # latent frames per chunk
    fps: float

    def of(self, m: int) -> str | Blend:
        return self.schedule.at(self.start_seconds(m))

    def label(self, m: int) -> str:
        """Chunk m's prompt as text (a blend named with its weight)."""
        return str(self.of(m))

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
