"""`pavdm generate --live` and `resume --live`: prompts read from standard input steer the video until the input ends
or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from orchestrator.core.prompts import MAX_PROMPT_CHARS
from orchestrator.engine.steering import Steering

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_steered(make: Callable[[Steering], T], lines: Iterable[str]) -> T:
    """`make` a video steered by `lines`: each becomes the prompt from the next chunk to enter the window; their
    end, or Ctrl-C, ends the video after the chunks in the window drain (a second Ctrl-C interrupts it, resumable)."""
    steering = Steering()
    previous = signal.signal(signal.SIGINT, stop_on_interrupt(steering))
    threading.Thread(target=feed, args=(lines, steering), name="pavdm-live-input", daemon=True).start()
    try:
        return make(steering)
    finally:
        signal.signal(signal.SIGINT, previous)


def feed(lines: Iterable[str], steering: Steering) -> None:
    """Each non-empty line a prompt change; at the end, the stop (also when the input cannot be read)."""
    try:
        for line in lines:
            text = line.strip()
            if len(text) > MAX_PROMPT_CHARS:
                log.warning("prompt of %d characters ignored: at most %d", len(text), MAX_PROMPT_CHARS)
            elif text:
                steering.change_prompt(text)
    except (OSError, ValueError) as err:  # closed or unreadable input
        log.warning("standard input ends here: %s", err)
    finally:
        steering.stop()


def stop_on_interrupt(steering: Steering):
    """A SIGINT handler: the first asks for the stop (from a thread of its own, as the interrupted code may hold the
    steering's lock), the second interrupts."""

    def handler(signum, frame) -> None:
        if steering.stop_asked:
            raise KeyboardInterrupt
        threading.Thread(target=steering.stop, daemon=True).start()
        print("pavdm: stopping once the chunks in the window are made (Ctrl-C again interrupts)", file=sys.stderr)

    return handler
