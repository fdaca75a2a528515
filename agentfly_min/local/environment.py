"""Settings for local engines: the machine's device, the engine config that
fits it, and the environment that keeps vLLM and Ray on loopback with their
files under a work folder."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeAlias

from ..configs import AsyncVLLMConfig

__all__ = [
    "Device",
    "free_port",
    "local_urlopen",
    "cpu_environment",
    "cpu_engine_config",
    "detect_device",
    "local_engine_config",
    "pinned",
    "split_cpus",
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
    eager mode, a 128 MiB KV cache.

    The model runs in a worker process beside vLLM's engine core, which
    waits on the worker's queue: vLLM's CPU platform turns a one-process
    executor (``"uni"``) into that unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
    and with it the one process was slower here (1,764 against 2,423
    tokens/s at 4 in flight, 5,870 against 6,312 at 16; its OpenMP threads
    are not bound), so none is asked for."""
    return AsyncVLLMConfig(
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=max_model_len,
        max_num_seqs=64,
        kv_cache_memory_bytes=128 << 20,
    )


def local_urlopen(url: str | urllib.request.Request, *, timeout: float) -> Any:
    """``urllib.request.urlopen`` for a local stack's own endpoints on
    127.0.0.1, past any configured proxy (urllib honours HTTP_PROXY, and a
    proxy cannot reach this machine's loopback)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=timeout)


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


def split_cpus() -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """``(client, server)`` CPUs for a client and a local server on one
    machine: one CPU for the client (an event loop, plus the bridge's on
    trio), the rest for the server; ``(None, None)`` with only one CPU.

    Unpinned on two cores, the client's loop shares a core with vLLM's busy
    engine processes; a scheduler trace showed it runnable but unscheduled
    for seconds after a burst of sends, which is the machine's doing, not
    the client's, and swamps what a benchmark means to measure."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return frozenset(allowed[:1]), frozenset(allowed[1:])


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread (and the threads and processes it starts
    meanwhile) on ``cpus``, and give it back its own set after; ``None``
    leaves it alone."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
