"""A fleet: several vLLM OpenAI servers behind vLLM's own router.

``with Fleet(model, work_dir=..., servers=2) as fleet:`` starts the servers
together (each on 127.0.0.1, each naming itself on every response through
:mod:`~agentfly_min.local.server_id`), then ``vllm-router`` (the Rust router
from PyPI, ``python -m vllm_router.launch_router``) in front of them with
the chosen ``policy`` (``consistent_hash`` keeps a session, keyed by the
``x-session-id`` header, on one server). ``fleet.base_url`` is the router's
``/v1``. On exit the router and every server are stopped, their process
groups killed and their shared memory swept; a router that does not come up
within ``router_timeout`` is an error carrying its last log lines.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .environment import Device, cpu_environment, free_port, local_urlopen
from .vllm_server import VLLMServer

__all__ = ["Fleet", "Router", "Policy", "FleetError"]

_log = logging.getLogger("agentfly_min.fleet")

Policy = Literal["consistent_hash", "sticky_least_loaded", "round_robin", "cache_aware", "power_of_two", "random"]


class FleetError(RuntimeError):
    """A fleet's router or servers did not come up."""


class Router:
    """``vllm-router`` in front of ``worker_urls``, as a child process:
    ``with Router(urls, work_dir=...) as router:``; ``router.base_url``. Its
    log goes to ``router.log_path``; one that exits or is not healthy within
    ``timeout`` raises :class:`FleetError` with its last lines.

    A router that dies while running is started again on the same address
    by a watcher thread (``restarts`` counts it): open clients keep their
    URL, and requests that failed meanwhile are retried by the client's
    retry layer. ``port`` reuses an address (``Fleet.reroute`` keeps its
    own); by default a free one is taken."""

    def __init__(
        self,
        worker_urls: Sequence[str],
        *,
        work_dir: Path,
        policy: Policy = "consistent_hash",
        timeout: float = 60.0,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        watch_interval: float = 0.5,
    ) -> None:
        self.worker_urls = list(worker_urls)
        self.policy = policy
        self._work_dir = work_dir
        self._timeout = timeout
        self._extra_args = list(extra_args)
        self.port = port if port is not None else free_port()
        self._metrics_port = free_port()
        self.log_path = work_dir / f"vllm-router-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._watch_interval = watch_interval
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Router:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name=f"vllm-router watcher :{self.port}", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _launch(self) -> None:
        args = [
            sys.executable, "-m", "vllm_router.launch_router",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--worker-urls", *self.worker_urls,
            "--policy", self.policy,
            # Its metrics on a port of its own: two routers must not collide.
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(self._metrics_port),
            # Notice a dead server within seconds, not the default minute.
            "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
            *self._extra_args,
        ]  # fmt: skip
        env = {**os.environ, **cpu_environment(self._work_dir)}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _watch(self) -> None:
        """Start the router again, on the same address, whenever it dies."""
        while not self._stop.wait(self._watch_interval):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            _log.warning("vllm-router on port %d exited with %s; starting it again on the same address", self.port, proc.returncode)
            try:
                self._launch()
                self._wait_ready()
            except FleetError as exc:  # try again at the next look; clients keep retrying meanwhile
                _log.error("vllm-router did not come back: %s", exc)
                continue
            self.restarts += 1

    def kill(self) -> None:
        """Kill the router outright, as a crash would (the watcher restarts it)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 9)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FleetError(f"vllm-router exited with {self._proc.returncode}; its last lines:\n{self.tail()}")
            try:
                with local_urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise FleetError(f"vllm-router not ready after {self._timeout:g} s; its last lines:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> None:
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(timeout=self._timeout + 5)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


class Fleet:
    """``servers`` vLLM OpenAI servers on ``model`` behind a :class:`Router`
    with ``policy``; see the module's description. ``servers`` are the
    :class:`VLLMServer` objects (``fleet.kill(k)`` crashes one),
    ``prefix_cache(k)`` reads one's cache counters."""

    def __init__(
        self,
        model: Path | str,
        *,
        work_dir: Path,
        servers: int = 2,
        policy: Policy = "consistent_hash",
        max_model_len: int = 1024,
        device: Device = "cpu",
        router_timeout: float = 60.0,
        server_timeout: float = 300.0,
        router_args: Sequence[str] = (),
    ) -> None:
        if servers < 1:
            raise ValueError(f"a fleet needs at least one server, got {servers}")
        self.model = str(model)
        self.policy = policy
        self._work_dir = work_dir
        self._router_timeout = router_timeout
        self._router_args = list(router_args)
        self.servers = [
            VLLMServer(
                model,
                work_dir=work_dir,
                max_model_len=max_model_len,
                device=device,
                startup_timeout=server_timeout,
                extra_args=("--middleware", "agentfly_min.local.server_id.ServerIdMiddleware"),
                env={"AGENTFLY_SERVER_ID": f"server-{k}"},
            )
            for k in range(servers)
        ]
        self.router: Router | None = None

    @property
    def base_url(self) -> str:
        assert self.router is not None, "the fleet is not running"
        return self.router.base_url

    @property
    def worker_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{server.port}" for server in self.servers]

    def reroute(self, policy: Policy) -> None:
        """Replace the router by one with ``policy``, keeping the servers
        (and their caches): to compare policies on the same fleet."""
        port = None
        if self.router is not None:
            port = self.router.port  # the same address: open clients keep working
            self.router.close()
        self.policy = policy
        self.router = Router(
            self.worker_urls, work_dir=self._work_dir, policy=policy, timeout=self._router_timeout, extra_args=self._router_args, port=port
        )
        self.router.__enter__()

    def server_id(self, index: int) -> str:
        """The name server ``index`` puts on its answers."""
        return f"server-{index}"

    def __enter__(self) -> Fleet:
        try:
            for server in self.servers:
                server.start()
            for server in self.servers:
                server.wait_ready()
            self.reroute(self.policy)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def kill(self, index: int) -> None:
        """Kill server ``index`` outright, as a crash would."""
        self.servers[index].kill()

    def prefix_cache(self, index: int) -> tuple[float, float]:
        """Server ``index``'s prefix-cache (hits, queries) in tokens, from its
        ``/metrics``."""
        with local_urlopen(f"http://127.0.0.1:{self.servers[index].port}/metrics", timeout=10) as response:
            text = response.read().decode()

        def total(name: str) -> float:
            return sum(float(m.group(1)) for m in re.finditer(rf"^vllm:{name}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.MULTILINE))

        return total("prefix_cache_hits_total"), total("prefix_cache_queries_total")

    def close(self) -> None:
        router, self.router = self.router, None
        if router is not None:
            router.close()
        for server in self.servers:
            server.stop()
