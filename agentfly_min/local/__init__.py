"""Local stacks a user can start: a vLLM OpenAI server, verl's Ray rollout
stack, a fleet of vLLM servers behind vLLM's router; and the settings they
share. Used by the bench, the ``rollout`` command and the tests alike; each
stops everything it started (processes, shared memory) on exit."""

from .environment import (
    Device,
    cpu_engine_config,
    cpu_environment,
    detect_device,
    free_port,
    local_engine_config,
    pinned,
    split_cpus,
)
from .vllm_server import VLLMServer

__all__ = [
    "Device",
    "VLLMServer",
    "cpu_engine_config",
    "cpu_environment",
    "detect_device",
    "free_port",
    "local_engine_config",
    "pinned",
    "split_cpus",
]
