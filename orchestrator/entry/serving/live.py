"""Steering videos through the API: a bound on prompt changes per minute, and a prompt schedule as the API shows it."""

from __future__ import annotations

import collections
import threading
import time

from orchestrator.core.prompts import split_entry
from orchestrator.entry.serving.requests import ApiError

MINUTE = 60.0


class ChangeRate:
    """At most `per_minute` prompt changes per video in any 60 seconds; beyond, HTTP 429 with Retry-After."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.times: dict[str, collections.deque[float]] = {}
        self.lock = threading.Lock()

    def admit(self, video_id: str) -> None:
        now = time.monotonic()
        with self.lock:
            times = self.times.setdefault(video_id, collections.deque())
            while times and times[0] <= now - MINUTE:
                times.popleft()
            if len(times) >= self.per_minute:
                raise ApiError(429, f"at most {self.per_minute} prompt changes a minute "
                                    "(serve.max_prompt_changes_per_minute); retry later", "prompt",
                               "rate_limit_exceeded", retry_after=int(times[0] + MINUTE - now) + 1)
            times.append(now)

    def forget(self, video_id: str) -> None:
        with self.lock:
            self.times.pop(video_id, None)


def shown_schedule(entries: list[str]) -> list[dict]:
    """A prompt schedule as the video object shows it: [{"seconds", "prompt", "transition_seconds"}], in order of
    time."""
    timed = sorted(split_entry(entry) for entry in entries)
    return [{"seconds": start, "prompt": text, "transition_seconds": transition} for start, text, transition in timed]
