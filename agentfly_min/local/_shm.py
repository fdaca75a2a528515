"""Shared-memory segments that killed engine processes leave in /dev/shm.

vLLM's engine queues live in POSIX shared memory (``psm_*``, with
``sem.mp-*`` semaphores). A process killed without its shutdown (a Ray actor
is killed, not asked to stop) never unlinks them, and each verl cluster left
about 400 MB of them. A stack snapshots the folder when it starts and, once
its processes are gone, removes what appeared since and nothing maps any
more. "Gone" matters: a process that is still exiting has often unmapped a
segment it is about to unlink itself (Python's finalizers and resource
tracker do), and removing it first makes that process fail its exit with a
traceback. So a sweep first waits for the processes it is told are dying.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["SHM", "Process", "descendants", "shm_entries", "sweep_shm"]

SHM = Path("/dev/shm")
_OURS = ("psm_", "sem.mp-")

Process = tuple[int, int]
"""A process as (pid, start time in clock ticks): a pid alone can be reused."""


def shm_entries() -> set[str]:
    """The names of the shared-memory segments and semaphores there now."""
    try:
        return {name for name in os.listdir(SHM) if name.startswith(_OURS)}
    except FileNotFoundError:  # not Linux
        return set()


def _in_use() -> set[str]:
    """Names under /dev/shm that a live process has mapped or open.

    A mapping is matched by inode as well as by name: glibc's ``sem_open``
    maps a semaphore under a temporary name and then links it to its real
    one, so /proc/<pid>/maps shows ``/dev/shm/sem.XXXXXX (deleted)`` for a
    semaphore that is very much alive. By name alone, a sweep removed the
    semaphores of an engine another process was starting at that moment,
    and its workers died unpickling them (``SemLock._rebuild``:
    FileNotFoundError)."""
    used: set[str] = set()
    inodes: set[int] = set()
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
                fields = line.split(maxsplit=5)
                if len(fields) > 4 and fields[4].isdigit():
                    inodes.add(int(fields[4]))
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/shm/"):
                    used.add(target[len("/dev/shm/") :])
        except OSError:
            continue
    if inodes:
        for name in shm_entries() - used:
            try:
                if (SHM / name).stat().st_ino in inodes:
                    used.add(name)
            except FileNotFoundError:
                continue
    return used


def _processes() -> dict[int, tuple[int, str, int]]:
    """Every process now: pid -> (parent pid, state, start time)."""
    found: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses; what follows the last ")" does not.
        fields = stat[stat.rfind(")") + 2 :].split()
        found[int(entry)] = (int(fields[1]), fields[0], int(fields[19]))
    return found


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants() -> set[Process]:
    """The processes below this one, except multiprocessing's resource
    tracker: it lives as long as this process does, so no sweep may wait
    for it."""
    try:
        procs = _processes()
    except FileNotFoundError:  # no /proc: not Linux
        return set()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    found: set[Process] = set()
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            todo.append(child)
            if not _is_resource_tracker(child):
                found.add((child, procs[child][2]))
    return found


def _alive(processes: set[Process]) -> set[Process]:
    if not processes:
        return set()
    now = _processes()
    # A zombie has exited; only its parent's wait is missing.
    return {(pid, start) for pid, start in processes if pid in now and now[pid][2] == start and now[pid][1] not in "ZX"}


def sweep_shm(before: set[str], *, dying: set[Process] | None = None, wait: float = 10.0) -> set[str]:
    """Remove the segments that appeared since ``before`` once the
    ``dying`` processes have exited and no process uses them (waiting up
    to ``wait`` seconds for both); return what is left that is still in
    use. A process still alive at the deadline is stuck: what it does not
    map is removed anyway, since a leak outlives it."""
    deadline = time.monotonic() + wait
    while True:
        late = time.monotonic() >= deadline
        if late or not _alive(dying or set()):
            new = shm_entries() - before
            busy = new & _in_use()  # reads every process's maps: only once the dying are gone
            for name in new - busy:
                try:
                    (SHM / name).unlink()
                except FileNotFoundError:
                    pass
            if not busy or late:
                return busy
        time.sleep(0.2)
