"""Whole-or-nothing file writes: a file is written under a temporary name, then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path


def partial_path(final: Path) -> Path:
    """The temporary name a file is written under until it is complete."""
    return final.with_name(f".{final.name}.partial")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file whole or not at all: under its partial name, then renamed over `path`."""
    temp = partial_path(path)
    temp.write_text(text)
    os.replace(temp, path)
