"""Shared-memory segments that killed engine processes leave in /dev/shm.

vLLM's engine queues live in POSIX shared memory (``psm_*``, with
``sem.mp-*`` semaphores). A process killed without its shutdown (a Ray actor
is killed, not asked to stop) never unlinks them, and each verl cluster left
about 400 MB of them. A stack snapshots the folder when it starts and, once
its processes are gone, removes what appeared since and nothing maps any
more.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["SHM", "shm_entries", "sweep_shm"]

SHM = Path("/dev/shm")
_OURS = ("psm_", "sem.mp-")


def shm_entries() -> set[str]:
    """The names of the shared-memory segments and semaphores there now."""
    try:
        return {name for name in os.listdir(SHM) if name.startswith(_OURS)}
    except FileNotFoundError:  # not Linux
        return set()


def _in_use() -> set[str]:
    """Names under /dev/shm that a live process has mapped or open."""
    used: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for line in maps.splitlines():
            at = line.find("/dev/shm/")
            if at >= 0:
                used.add(line[at + len("/dev/shm/") :].split(" ")[0])
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/shm/"):
                    used.add(target[len("/dev/shm/") :])
        except OSError:
            continue
    return used


def sweep_shm(before: set[str], *, wait: float = 10.0) -> set[str]:
    """Remove the segments that appeared since ``before`` once no process
    uses them (waiting up to ``wait`` seconds for dying processes); return
    what is left that is still in use."""
    deadline = time.monotonic() + wait
    while True:
        new = shm_entries() - before
        busy = new & _in_use()
        for name in new - busy:
            try:
                (SHM / name).unlink()
            except FileNotFoundError:
                pass
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.2)
