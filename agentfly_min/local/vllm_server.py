"""A real vLLM OpenAI-compatible server on 127.0.0.1, as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from ._shm import shm_entries, sweep_shm
from .environment import Device, cpu_environment, free_port, local_urlopen

__all__ = ["VLLMServer"]


def _checked_cpus(cpus: Collection[int] | None) -> frozenset[int] | None:
    if cpus is None:
        return None
    chosen = frozenset(cpus)
    if not chosen:
        raise ValueError("cpus must name at least one CPU (or be None to leave the server unpinned)")
    allowed = os.sched_getaffinity(0)
    if not chosen <= allowed:
        raise ValueError(f"cpus {sorted(chosen - allowed)} are not available to this process (it may use {sorted(allowed)})")
    return chosen


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` for a model folder.

    ``with VLLMServer(model, work_dir=...) as server:`` starts it, waits for
    ``/health`` and stops it (the whole process group) on exit.
    ``base_url`` is its ``/v1`` URL. Tool-call parsing is on, with vLLM's
    ``tool_parser`` (Hermes by default).

    ``cpus`` pins the server (its API process and every process and thread
    it starts) to those CPUs. On a small machine that runs the client too,
    this keeps the two apart: unpinned, the client's event loop shares a
    core with vLLM's busy engine processes, and a burst of sends on fresh
    connections can leave it runnable but unscheduled for seconds (seen here
    on two cores with a scheduler trace; see docs/bench.md).
    """

    def __init__(
        self,
        model: Path | str,
        *,
        work_dir: Path,
        max_model_len: int = 512,
        kv_cache_bytes: int = 128 << 20,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 300.0,
        device: Device = "cpu",
        tool_parser: str = "hermes",
        cpus: Collection[int] | None = None,
    ) -> None:
        self.cpus = _checked_cpus(cpus)
        self.model = str(model)
        self.port = free_port()
        self._work_dir = work_dir
        # On a CPU: bfloat16, no graph capture, a fixed KV cache (the model
        # runs in a worker process of its own, as cpu_engine_config says
        # why). On a GPU vLLM's defaults fit better than anything chosen here.
        cpu_only = [
            "--dtype", "bfloat16",
            "--enforce-eager",
            "--kv-cache-memory-bytes", str(kv_cache_bytes),
        ]  # fmt: skip
        self._args = [
            "--model", self.model,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *(cpu_only if device == "cpu" else []),
            "--max-model-len", str(max_model_len),
            "--enable-auto-tool-choice",
            "--tool-call-parser", tool_parser,
            *extra_args,
        ]  # fmt: skip
        self._env = {**os.environ, **cpu_environment(work_dir, offline=Path(model).exists()), **(env or {})}
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._shm_before: set[str] = set()
        self.log_path = work_dir / f"vllm-server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def start(self) -> None:
        """Start the process and return at once (``wait_ready`` waits): a
        fleet starts its servers together."""
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._shm_before = shm_entries()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *self._args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # its own process group, so stop() reaches its children
            )
        if self.cpus is not None:
            # Set before the interpreter has started a thread or a child
            # (that takes seconds of imports), so all of them inherit it.
            os.sched_setaffinity(self._proc.pid, self.cpus)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """Kill the server outright (its whole process group), as a crash
        would; ``stop`` still cleans up after it."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 9)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"vLLM server exited with {self._proc.returncode}:\n{tail}")
            try:
                with local_urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"vLLM server not ready after {self._timeout:g} s; log: {self.log_path}")

    def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        try:  # stragglers in its group (engine core, workers)
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        sweep_shm(self._shm_before)  # an engine killed mid-shutdown leaves its queues
