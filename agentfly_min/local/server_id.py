"""An ASGI middleware that names the server on every response.

A fleet's vLLM servers load it (``--middleware``), so each answer carries an
``x-agentfly-server`` header with ``$AGENTFLY_SERVER_ID``: the client
transport keeps it on the completion, and a trajectory knows which servers
served its turns (a session that moved lost its prefix cache).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ServerIdMiddleware", "HEADER"]

HEADER = "x-agentfly-server"

_Message = MutableMapping[str, Any]
_App = Callable[[_Message, Callable[[], Awaitable[_Message]], Callable[[_Message], Awaitable[None]]], Awaitable[None]]


class ServerIdMiddleware:
    def __init__(self, app: _App) -> None:
        self.app = app
        self.value = os.environ.get("AGENTFLY_SERVER_ID", "").encode("latin-1", "replace")

    async def __call__(
        self, scope: _Message, receive: Callable[[], Awaitable[_Message]], send: Callable[[_Message], Awaitable[None]]
    ) -> None:
        if scope.get("type") != "http" or not self.value:
            await self.app(scope, receive, send)
            return

        async def tagged(message: _Message) -> None:
            if message.get("type") == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (HEADER.encode(), self.value)]}
            await send(message)

        await self.app(scope, receive, tagged)
