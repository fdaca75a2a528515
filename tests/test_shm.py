"""What an engine's close removes from /dev/shm, and when.

Real processes, no engine: a segment's owner is a child process that
behaves as vLLM's workers do on their way out (unmap first, unlink last),
or one that is killed and never unlinks.
"""

from __future__ import annotations

import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agentfly_min.local._shm import SHM, descendants, shm_entries, sweep_shm
from agentfly_min.transports._bridge import AsyncioThread
from agentfly_min.transports.vllm import VLLMEngine

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory lives in /dev/shm on Linux only")

# Owns a segment it does not map, as an exiting worker does once it has
# unmapped its queue, and unlinks it after a while: exit 1 if someone else
# removed it first (in vLLM's worker that is a FileNotFoundError traceback
# from a multiprocessing finalizer).
_EXITING_OWNER = """
import os, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(bytes(64))
time.sleep(float(sys.argv[2]))
try:
    os.unlink(path)
except FileNotFoundError:
    sys.exit(1)
"""


def _segment() -> Path:
    return SHM / f"psm_{uuid.uuid4().hex[:8]}"


@contextmanager
def _owner(segment: Path, unlink_after: float) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that owns ``segment`` (created before this yields)
    and unlinks it after ``unlink_after`` seconds; killed and the segment
    removed on the way out, whatever the test did."""
    owner = subprocess.Popen([sys.executable, "-c", _EXITING_OWNER, str(segment), str(unlink_after)])
    try:
        deadline = time.monotonic() + 30
        while not segment.exists():
            assert time.monotonic() < deadline, f"{segment} never appeared"
            time.sleep(0.02)
        yield owner
    finally:
        owner.kill()
        owner.wait()
        segment.unlink(missing_ok=True)


class _Shutdown:
    """An engine whose shutdown returns before its processes have exited."""

    def __init__(self, then: object = None) -> None:
        self.then = then

    def shutdown(self, timeout: float | None = None) -> None:
        if callable(self.then):
            self.then()


def test_close_leaves_an_exiting_process_its_own_segment_to_unlink() -> None:
    segment = _segment()
    shm_before, procs_before = shm_entries(), descendants()
    with _owner(segment, 1.0) as owner:
        engine = VLLMEngine(AsyncioThread("test-shm"), _Shutdown(), None, 64, shm_before=shm_before, procs_before=procs_before)
        engine.close()
        assert owner.wait(timeout=30) == 0, "close removed the segment before its owner could"
        assert not segment.exists()


def test_close_removes_what_a_killed_process_left() -> None:
    """vLLM SIGKILLs an engine core that has not exited 5 s after SIGTERM (a
    loaded CI machine hit it); the killed process never unlinks its queue."""
    older = _segment()
    older.write_bytes(bytes(64))  # another program's, from before the engine
    segment = _segment()
    shm_before, procs_before = shm_entries(), descendants()
    try:
        with _owner(segment, 600) as owner:
            engine = VLLMEngine(
                AsyncioThread("test-shm"), _Shutdown(lambda: owner.send_signal(signal.SIGKILL)), None, 64,
                shm_before=shm_before, procs_before=procs_before,
            )  # fmt: skip
            started = time.monotonic()
            engine.close()
            assert owner.wait(timeout=30) == -signal.SIGKILL
            assert not segment.exists()
            assert older.exists()
            assert time.monotonic() - started < 5, "close waited for a process that was gone"
    finally:
        older.unlink(missing_ok=True)


def test_close_removes_an_unmapped_segment_of_a_stuck_process_at_the_deadline() -> None:
    segment = _segment()
    shm_before, procs_before = shm_entries(), descendants()
    with _owner(segment, 600) as owner:
        dying = descendants() - procs_before
        assert {pid for pid, _ in dying} == {owner.pid}
        started = time.monotonic()
        assert sweep_shm(shm_before, dying=dying, wait=0.5) == set()
        assert time.monotonic() - started >= 0.5, "it did not wait for the dying process"
        assert not segment.exists()


def test_descendants_are_this_processes_children_but_not_its_resource_tracker() -> None:
    """The tracker lives as long as this process: a sweep that waited for it
    would always run into its deadline."""
    multiprocessing.resource_tracker.ensure_running()
    tracker = vars(multiprocessing.resource_tracker._resource_tracker)["_pid"]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        pids = {pid for pid, _ in descendants()}
        assert child.pid in pids
        assert tracker is not None and tracker not in pids
        assert os.getpid() not in pids
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {pid for pid, _ in descendants()}


def test_a_sweep_leaves_the_semaphores_of_a_live_process_alone() -> None:
    """glibc maps a semaphore under a temporary name and links it to its
    real one afterwards, so its mapping reads "(deleted)": found by name only,
    a sweep removed the semaphores of an engine starting in another process,
    whose workers then died unpickling them (a CI run lost two verl tests so)."""
    import multiprocessing

    before = shm_entries()
    context = multiprocessing.get_context("spawn")
    lock = context.Lock()
    made = shm_entries() - before
    assert made, "a spawn-context lock is a named semaphore in /dev/shm"
    left = sweep_shm(before, wait=0.0)
    assert made <= left and made <= shm_entries()
    with lock:  # and it still works
        pass
