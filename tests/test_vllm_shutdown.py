"""Shutting a real vLLM engine down when its engine core does not answer:
its own module, since it kills the engine it starts (the shared engine of
test_vllm_engine is gone by then: one engine at a time on two cores)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from agentfly_min.local._shm import shm_entries
from agentfly_min.transports.vllm import VLLMEngine

from .vllm_support import ENGINE_CONFIG, assert_gone, assert_reaped, engine_children

pytestmark = pytest.mark.slow


def test_an_engine_core_killed_at_shutdown_is_reaped(tiny_model_path: Path) -> None:
    """vLLM SIGKILLs an engine core that has not exited a few seconds after
    SIGTERM (a loaded machine hits it) and does not wait for it: a process
    that starts engines again and again (the bench's starts) piled up
    zombies until close reaped them."""
    before = {p.pid for p in engine_children()}
    shm_before = shm_entries()
    engine = VLLMEngine.start(ENGINE_CONFIG, tiny_model_path)
    children = [p for p in engine_children() if p.pid not in before]
    cores = [p for p in children if p.ppid() == os.getpid()]
    assert cores, "vLLM runs its engine core as a child process"
    for core in cores:
        os.kill(core.pid, signal.SIGSTOP)  # deaf to SIGTERM, as a core stuck in a step is
    engine.close()
    assert_gone(children, timeout=60)
    assert_reaped(cores)
    assert shm_entries() - shm_before == set()
