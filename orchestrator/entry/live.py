"""`pavdm generate --live`: prompts read from standard input steer the video until the input ends or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterable

from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.core.prompts import MAX_PROMPT_CHARS
from orchestrator.engine.steering import Steering
from orchestrator.entry.generate import GenerationResult, generate

log = logging.getLogger(__name__)


def generate_live(config: Config, lines: Iterable[str], progress: bool = True) -> GenerationResult:
    """A new video of at most config.seconds whose prompt becomes each line of `lines` in turn, from the next chunk
    to enter the window; the end of `lines`, or Ctrl-C, ends it after the chunks in the window drain (a second Ctrl-C
    interrupts it, resumable)."""
    if config.pipeline.stages == 0:
        raise UserError("--live runs on the pipeline's executor: pipeline.stages must be >= 1")
    steering = Steering()
    previous = signal.signal(signal.SIGINT, stop_on_interrupt(steering))
    threading.Thread(target=feed, args=(lines, steering), name="pavdm-live-input", daemon=True).start()
    try:
        return generate(config, progress, steering)
    finally:
        signal.signal(signal.SIGINT, previous)


def feed(lines: Iterable[str], steering: Steering) -> None:
    """Each non-empty line a prompt change; at the end, the stop."""
    for line in lines:
        text = line.strip()
        if len(text) > MAX_PROMPT_CHARS:
            log.warning("prompt of %d characters ignored: at most %d", len(text), MAX_PROMPT_CHARS)
        elif text:
            steering.change_prompt(text)
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
