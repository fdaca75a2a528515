"""The gateway's HTTP server and its handle.

aiohttp serves on a thread of its own, on an asyncio loop of its own, on
either caller backend; each request is handed to the caller's loop (an
anyio portal), where the sessions live and the transport runs. So sessions
need no locks, the transport is called on the loop it was opened on (an
asyncio-bound engine stays bridged as it is for the agent loop), and a
client that leaves cancels its request there: aiohttp cancels the handler
on a lost connection, which cancels the portal's task, which aborts the
engine request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.from_thread
from aiohttp import web

from ..agent import Trajectory
from ..agent._tokens import Tokenizer
from ..agent.agent import RewardFn, Task
from ..records import Generate
from ..templates import Template
from ..templates.select import resolve_template
from .config import GatewayConfig
from .sessions import Answer, Core, Plan
from .wire import Reply, completion_body, error_reply, first_chunk, models_body, stream_chunks, stream_error

__all__ = ["Gateway", "Session", "open_gateway"]

_log = logging.getLogger("agentfly_min.gateway")
T = TypeVar("T")


class Session:
    """An open session: point the agent's OpenAI client at ``base_url``."""

    def __init__(self, ident: str, base_url: str) -> None:
        self.id = ident
        self.base_url = base_url

    def __repr__(self) -> str:
        return f"Session({self.id!r}, {self.base_url!r})"


class Gateway:
    """A running gateway (from :func:`open_gateway`). Use it from the loop
    that opened it."""

    def __init__(self, core: Core, url: str) -> None:
        self._core = core
        self.url = url
        """``http://host:port``; a session's OpenAI base URL is ``{url}/sessions/{id}/v1``."""

    def session_url(self, session_id: str) -> str:
        return f"{self.url}/sessions/{session_id}/v1"

    def open_session(self, task: Task | None = None, *, session_id: str | None = None, chain_index: int = 0) -> Session:
        """Start a session (one episode) for ``task``: the reward sees the
        task, and its ``id`` names the trajectories' group. ``session_id``
        is random unless given."""
        ident = self._core.open(task, session_id=session_id, chain_index=chain_index)
        return Session(ident, self.session_url(ident))

    def session_ids(self) -> list[str]:
        """The sessions still open."""
        return self._core.session_ids()

    async def end_session(self, session_id: str, *, error: str | None = None) -> list[Trajectory]:
        """End a session; its token-exact segments as trajectories (one when
        the agent never rewrote its history), rewarded on the final messages.
        ``error`` (the agent failed, say) is recorded on the last one."""
        return await self._core.end(session_id, error=error)

    async def end_all(self) -> list[Trajectory]:
        """End every open session; all their trajectories."""
        out: list[Trajectory] = []
        for ident in self._core.session_ids():
            out.extend(await self._core.end(ident))
        return out


def _reply(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type="application/json")


class _Server:
    """aiohttp on its own thread and loop, calling into the caller's loop."""

    def __init__(self, core: Core, portal: anyio.from_thread.BlockingPortal, config: GatewayConfig) -> None:
        self._core = core
        self._portal = portal
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="agentfly_min gateway", daemon=True)
        self.port = 0

    def start(self) -> None:
        """Start serving (blocks until the socket is bound)."""
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for the start
                self._failed = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
        finally:
            loop.close()

    async def _setup(self) -> None:
        app = web.Application(client_max_size=self._config.max_body_bytes, middlewares=[_errors])
        chat, models = self._chat, self._models
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/sessions/{session}/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/sessions/{session}/v1/models", models)
        app.router.add_get("/health", self._health)
        # A client that leaves cancels its handler (and with it the engine request).
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        future: concurrent.futures.Future[T] = self._portal.start_task_soon(function, *args)
        return await asyncio.wrap_future(future)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        return web.Response(body=models_body(self._config.model), content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        ident = request.match_info.get("session") or request.headers.get("X-Session-Id")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _reply(error_reply(413, f"the request body is over {self._config.max_body_bytes} bytes (GatewayConfig.max_body_bytes)", code="request_too_large"))
        try:
            planned = await self._call(self._core.prepare, ident, raw)
        except RuntimeError:  # the portal is closing: the gateway is shutting down
            return _reply(error_reply(503, "the gateway is shutting down", kind="service_unavailable"))
        if isinstance(planned, Reply):
            return _reply(planned)
        plan: Plan = planned
        model = self._config.model
        try:
            if not plan.stream:
                answer = await self._call(self._core.complete, plan)
                if isinstance(answer, Reply):
                    return _reply(answer)
                body = completion_body(plan.ident, model, answer.content, answer.reasoning, answer.calls, answer.finish, answer.usage)
                return web.Response(body=body, content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            await response.write(first_chunk(plan.ident, model))
            result: Answer | Reply = await self._call(self._core.complete, plan)
            if isinstance(result, Reply):
                await response.write(stream_error(result))
            else:
                usage = result.usage if plan.include_usage else None
                await response.write(stream_chunks(plan.ident, model, result.content, result.reasoning, result.calls, result.finish, usage))
            await response.write_eof()
            return response
        finally:
            try:
                self._portal.start_task_soon(_release, self._core, plan)
            except RuntimeError:
                pass  # the portal is gone, and the sessions with it


async def _release(core: Core, plan: Plan) -> None:
    core.release(plan)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """aiohttp's own errors (no such route, wrong method) in OpenAI's shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind: Any = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return _reply(error_reply(exc.status, f"{exc.reason}: {request.method} {request.path}", kind=kind))


@asynccontextmanager
async def open_gateway(
    generate: Generate,
    tokenizer: Tokenizer,
    config: GatewayConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    template: Template | None = None,
) -> AsyncIterator[Gateway]:
    """Serve an OpenAI-compatible gateway in front of ``generate`` (a
    token-level transport: the in-process vLLM engine, verl's servers, a
    fleet over token ids) until the block ends::

        async with open_vllm(config, model) as generate, open_gateway(generate, tokenizer) as gateway:
            session = gateway.open_session(task)
            await my_agent(session.base_url)          # any OpenAI client
            trajectories = await gateway.end_session(session.id)

    ``template`` overrides ``config.template`` (a Template with options
    applied, say). Leaving the block stops the server; sessions still open
    are dropped (end them first to keep them).
    """
    config = config or GatewayConfig()
    chosen = template or resolve_template(config.template, tokenizer=tokenizer)
    core = Core(generate, tokenizer, chosen, config, reward_fn)
    async with anyio.from_thread.BlockingPortal() as portal:
        server = _Server(core, portal, config)
        await anyio.to_thread.run_sync(server.start)
        try:
            yield Gateway(core, f"http://{config.host}:{server.port}")
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.stop)
