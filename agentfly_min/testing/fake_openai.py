"""A local OpenAI-compatible chat server that can misbehave on purpose.

It speaks the chat-completions wire format (and a plain text-completions
one, without vLLM's extensions) on 127.0.0.1 (real sockets, real HTTP
through uvicorn) and echoes the last user message back, so a caller can
tell every answer apart. Faults are injected from a script (the next requests
get exactly these faults, in order) or at random with a seeded rate:

- ``"429"`` / ``"500"`` / ``"503"`` / ``"400"``: that status (429 with
  ``Retry-After: retry_after``),
- ``"drop"``: the response starts, then the connection is closed mid-body,
- ``"slow"``: the answer takes ``slow_seconds``; if the client hangs up
  first, the log records ``disconnected`` (how a test sees that a cancelled
  request stopped the server's work),
- ``"malformed"``: 200 with a body that is not a chat completion,
- ``"empty"``: 200 with a chat completion whose ``choices`` is empty,
- ``"context"``: 400 with vLLM's "maximum context length" message,
- ``"cut"``: a streamed answer whose connection drops after two chunks.

Streamed answers (``"stream": true``) come one word a chunk, ``chunk_delay``
seconds apart, with a final usage chunk.

Like OpenAI's API: models named like its reasoning models (``o1``, ``o3``,
``gpt-5``...) refuse ``max_tokens`` and take ``max_completion_tokens``;
``reasoning`` set, every answer carries it as ``reasoning_content``; a
``response_format`` is answered with JSON of its schema (each field filled
from the schema's types); usage reports cached and reasoning tokens; every
answer has an ``x-request-id``. ``GET /_requests`` returns every request as
received (path, query, headers, JSON body).

``models`` is what ``GET /models`` lists.

Every request is logged with a server-side timestamp (``time.monotonic``),
its key (the last user message) and outcome; ``GET /_log`` returns the log.
It runs in its own process (:class:`FakeOpenAIServer`) so that its CPU time
never mixes with the client's being measured.

Run by hand: ``python -m agentfly_min.testing.fake_openai`` prints its port.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import msgspec

from ..local.environment import local_urlopen
from ._fake_app import App, FaultKind, LogEntry, SeenRequest, ServerSettings

__all__ = ["FakeOpenAIServer", "FaultKind", "ServerSettings", "LogEntry", "SeenRequest"]


def _serve(port: int) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)  # before READY: a client may connect at once
    config = uvicorn.Config(App(), log_level="critical", access_log=False, lifespan="off", backlog=2048)
    server = uvicorn.Server(config)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


class FakeOpenAIServer:
    """The fake server in a child process: ``with FakeOpenAIServer() as s``.

    ``base_url`` is its ``/v1`` URL; :meth:`configure` replaces its
    settings (and clears the log); :meth:`log` reads the log. The child is
    terminated on exit.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> FakeOpenAIServer:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from agentfly_min.testing.fake_openai import main; main()", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"fake OpenAI server did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def configure(self, settings: ServerSettings | None = None, **changes: Any) -> None:
        """Set the server's behaviour: a :class:`ServerSettings`, or its fields
        as keywords. Clears the log and restarts the fault script."""
        chosen = settings if settings is not None else msgspec.convert(changes, ServerSettings)
        self._post("/_control", msgspec.json.encode(chosen))

    def log(self) -> list[LogEntry]:
        with local_urlopen(f"{self.url}/_log", timeout=30) as response:
            return msgspec.json.decode(response.read(), type=list[LogEntry])

    def requests(self) -> list[SeenRequest]:
        """Every request the server received since the last ``configure``,
        with its path, query, headers and JSON body."""
        with local_urlopen(f"{self.url}/_requests", timeout=30) as response:
            return msgspec.json.decode(response.read(), type=list[SeenRequest])

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(
            f"{self.url}{path}", data=body, headers={"content-type": "application/json"}, method="POST"
        )
        with local_urlopen(request, timeout=30) as response:
            response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    _serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
