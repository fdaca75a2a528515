"""Settings for local engines: the machine's device, the engine config that
fits it, and the environment that keeps vLLM and Ray on loopback with their
files under a work folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, TypeAlias

from ..configs import AsyncVLLMConfig

__all__ = [
    "Device",
    "free_port",
    "cpu_environment",
    "cpu_engine_config",
    "detect_device",
    "local_engine_config",
]

Device: TypeAlias = Literal["cpu", "cuda"]


def detect_device() -> Device:
    """``"cuda"`` where torch sees a GPU (honouring ``CUDA_VISIBLE_DEVICES``),
    else ``"cpu"``; the local stacks pick their settings from it."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"


def local_engine_config(device: Device, max_model_len: int = 1024) -> AsyncVLLMConfig:
    """The CPU settings on a CPU; on a GPU, vLLM's own defaults (its memory
    fraction, CUDA graphs, its executor) with the same context length."""
    if device == "cpu":
        return cpu_engine_config(max_model_len)
    return AsyncVLLMConfig(max_model_len=max_model_len)


def cpu_engine_config(max_model_len: int = 1024) -> AsyncVLLMConfig:
    """Engine settings that run the tiny model on a 2-core CPU: bfloat16,
    eager mode, a 128 MiB KV cache, one process for the model."""
    return AsyncVLLMConfig(
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=max_model_len,
        max_num_seqs=64,
        kv_cache_memory_bytes=128 << 20,
        engine_args={"distributed_executor_backend": "uni"},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_environment(work_dir: Path, *, offline: bool = True) -> dict[str, str]:
    """Environment for vLLM (and Ray) on one machine: queues and Ray on
    loopback, no usage reports, temp files and caches under ``work_dir``;
    with ``offline`` (a local model folder needs no hub) ``HF_HUB_OFFLINE=1``,
    unless the environment already says otherwise."""
    tmp = work_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    hub = {"HF_HUB_OFFLINE": "1"} if offline and "HF_HUB_OFFLINE" not in os.environ else {}
    return {
        **hub,
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "TMPDIR": str(tmp),
        "VLLM_CACHE_ROOT": str(work_dir / "vllm"),
        # Ray replaces a loopback node address with the host's unless told this.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
