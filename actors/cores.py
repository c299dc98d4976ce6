"""Cores of a stage's own: claimed with a lock on one file per core, so that no two stages on a machine (of one run
or of several) are bound to the same core, and given back when the stage's process ends."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

CLAIMS = Path(tempfile.gettempdir()) / "pavdm-cores"  # <core>.lock, locked by the process that holds that core
_held: list[IO] = []  # this process's claims: a lock lasts as long as its open file


def bind_own_cores(count: int) -> list[int]:
    """Claim `count` cores that no other process holds, of those this process may run on, and bind the calling
    thread to them (threads it starts later, torch's among them, inherit the binding). Returns the cores, or []
    where fewer are free or the platform cannot bind: the thread then runs wherever the system puts it."""
    if count < 1 or not hasattr(os, "sched_setaffinity"):
        return []
    claims: list[tuple[int, IO]] = []
    try:
        CLAIMS.mkdir(exist_ok=True)
        for core in sorted(os.sched_getaffinity(0)):
            if len(claims) == count:
                break
            handle = open(CLAIMS / f"{core}.lock", "w")  # noqa: SIM115 (held open: the lock is the claim)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process holds this core
                handle.close()
                continue
            claims.append((core, handle))
    except OSError:  # e.g. another user's claims folder: bind nothing
        pass
    if len(claims) < count:
        for _, handle in claims:
            handle.close()
        return []
    cores = [core for core, _ in claims]
    os.sched_setaffinity(0, cores)
    _held.extend(handle for _, handle in claims)
    return cores
