"""What Python callers pass, turned into config values, and bad input raised as the ValueError they expect."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from orchestrator.core.errors import UserError

Prompt = str | Sequence[str] | Sequence[tuple[float, str]]
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@contextlib.contextmanager
def value_errors() -> Iterator[None]:
    """The project's UserError (bad input: arguments, config, files) raised as a ValueError with its message."""
    try:
        yield
    except UserError as err:
        raise ValueError(str(err)) from None


def prompt_entries(prompt: Prompt) -> list[str]:
    """The config's prompt entries for a prompt (the whole text, from 0 s) or a prompt schedule: 'SECONDS:TEXT'
    entries or (seconds, text) pairs."""
    if isinstance(prompt, str):
        return [f"0:{prompt}"]  # the whole text, even one that starts like "16:9 ..."
    if not isinstance(prompt, Sequence):
        raise ValueError(f"prompt must be a string or a list of 'SECONDS:TEXT' entries or (seconds, text) pairs, got "
                         f"{type(prompt).__name__}")
    entries = []
    for entry in prompt:
        if isinstance(entry, str):
            entries.append(entry)
        elif (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str)
              and isinstance(entry[0], int | float) and not isinstance(entry[0], bool)):
            entries.append(f"{entry[0]}:{entry[1]}")
        else:
            raise ValueError(f"a prompt schedule holds 'SECONDS:TEXT' strings or (seconds, text) pairs, got "
                             f"{str(entry)[:60]!r}")
    return entries


def number(name: str, value: Any) -> float:
    """A real number given for `name`; its range is checked with the config."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {str(value)[:40]!r}")
    return float(value)


def dtype_name(dtype: torch.dtype | str) -> str:
    """model.dtype for a torch_dtype: torch.float32, torch.bfloat16 or torch.float16 (or their names)."""
    name = DTYPES.get(dtype) if isinstance(dtype, torch.dtype) else dtype
    if not isinstance(name, str) or name not in DTYPES.values():
        raise ValueError(f"torch_dtype must be one of torch.float32, torch.bfloat16, torch.float16, got {dtype!r}")
    return name
