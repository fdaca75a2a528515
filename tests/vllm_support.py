"""Shared by the tests that run real engines: settings and process checks."""

from __future__ import annotations

import time

import psutil

import msgspec

from agentfly_min.local import cpu_engine_config

# What runs on a 2-core CPU machine (see shared/NOTES-vllm-cpu.md). JSON
# without free whitespace: a random model otherwise loops on newlines inside
# a constrained JSON answer (xgrammar lets any whitespace through by default).
COMPACT_JSON = {"backend": "xgrammar", "disable_any_whitespace": True}
_cpu = cpu_engine_config()
ENGINE_CONFIG = msgspec.structs.replace(_cpu, engine_args={**_cpu.engine_args, "structured_outputs_config": COMPACT_JSON})


def engine_children() -> list[psutil.Process]:
    """Our child processes that belong to an engine (not the multiprocessing
    resource tracker, which lives as long as we do)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
        found.append(child)
    return found


def assert_gone(processes: list[psutil.Process], timeout: float = 30.0) -> None:
    """Every process in ``processes`` has exited (zombies count as exited)."""
    deadline = time.monotonic() + timeout
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.2)
    assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
