"""Prompt schedules: 'SECONDS:TEXT' entries, each prompt active from its start time until the next."""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from actors.codecs import FrameCount
from orchestrator.errors import UserError

MAX_PROMPT_CHARS = 2000
_TIMED = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:(.*)$", re.DOTALL)


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
            match = _TIMED.match(entry)
            start, text = (float(match[1]), match[2].strip()) if match else (0.0, entry.strip())
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
            raise UserError(f"the first prompt must start at 0 seconds, not {starts[0]:g}")
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
        return self.schedule.at(self.frames.video_frames(m * self.chunk) / self.fps)
