"""The lean wire path of the client transport: aiohttp and msgspec.

One process driving a fleet of GPU servers is CPU-bound on its HTTP client.
The openai SDK spends about 2 ms of CPU per request here (httpx, pydantic,
its own retry and header machinery); aiohttp with msgspec about 0.1 ms. This
path sends the same bodies the SDK path builds, reads the answers with the
same msgspec decoders into the same records, and raises the same typed
errors, so the middleware above it cannot tell the two apart.

aiohttp is bound to asyncio. On trio the session lives on an asyncio loop on
a thread of its own (as the vLLM engine does) and calls are bridged to it;
cancelling a call cancels it there, which closes its connection.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import msgspec

from ..configs import ClientConfig
from ..errors import ContextLengthError, GenerationTimeoutError, PermanentError, TransientError
from ..local.server_id import HEADER as SERVER_HEADER
from ..records import Completion, Generate, Middleware, Request
from ._bridge import AsyncioThread, on_asyncio
from ..templates.chat import refuse_images
from ._openai_wire import (
    _api_key,
    _body,
    _completion,
    _one_model,
    _options,
    _text_body,
    _text_completion,
    check_budget,
    status_error,
    token_prompt_refused,
)

__all__ = ["open_aiohttp_generate"]


class _Credential(str):
    """A header value that holds the key: itself on the wire, a mask in any
    ``repr`` (aiohttp keeps headers in a CIMultiDict, and a traceback with
    locals printed it, key and all)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'Bearer **********'"


def _headers(config: ClientConfig) -> dict[str, str]:
    headers = {"Authorization": _Credential(f"Bearer {_api_key(config)}"), "Content-Type": "application/json", "Accept": "application/json"}
    # Unset, they come from the environment, as the SDK reads them.
    organization = config.organization if config.organization is not None else os.environ.get("OPENAI_ORG_ID")
    project = config.project if config.project is not None else os.environ.get("OPENAI_PROJECT_ID")
    if organization is not None:
        headers["OpenAI-Organization"] = organization
    if project is not None:
        headers["OpenAI-Project"] = project
    headers.update(config.default_headers or {})
    return headers


def _env_proxy(base_url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for ``base_url``, with its
    credentials (None where NO_PROXY exempts the host or none is set)."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, auth = get_env_proxy_for_url(URL(base_url))
    except LookupError:
        return None, None
    return str(proxy), auth


def _message(body: bytes) -> str:
    # OpenAI: {"error": {"message": ...}}; vLLM and others: {"message": ...},
    # {"detail": ...} or {"error": "..."}; anything else as text.
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            for key in ("message", "detail"):
                if isinstance(error.get(key), str):
                    return str(error[key])
        if isinstance(error, str):
            return error
    return body[:500].decode("utf-8", "replace")


class _Model(msgspec.Struct):
    id: str


class _Page(msgspec.Struct):
    data: list[_Model] = []


class _Wire:
    """One aiohttp session (on the loop it was made on) and the calls."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.base = config.base_url.rstrip("/")
        # No pool cap: concurrency is the middleware's job (aiohttp's default
        # of 100 connections would queue requests invisibly).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # aiohttp's total deadline is the per-attempt timeout of the default
        # stack (client_middleware leaves its own layer out on this path):
        # one timer per request, not two.
        # HTTP(S)_PROXY, ALL_PROXY and NO_PROXY are read once, here, as
        # openai-python's httpx client reads them when it is made. aiohttp's
        # trust_env reads them (and .netrc, which the Authorization header
        # overrides anyway) on every request, each time on a worker thread:
        # two thread hops a request, which tripled the CPU a request cost
        # (0.21 to 0.6-0.75 ms at 256 in flight on two cores).
        self.proxy, self.proxy_auth = _env_proxy(self.base)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=_headers(config),
            timeout=aiohttp.ClientTimeout(total=config.timeout),
            json_serialize=lambda value: msgspec.json.encode(value).decode(),
        )

    async def close(self) -> None:
        await self.session.close()

    async def models(self) -> list[str]:
        try:
            body, status, headers = await self._send("GET", f"{self.base}/models", None, None, None)
        except GenerationTimeoutError as exc:  # no generation: say what timed out
            raise TransientError(f"listing the server's models took more than {exc.seconds:g} s") from None
        if status >= 400:
            raise status_error(status, headers, _message(body))
        try:
            return [m.id for m in msgspec.json.decode(body, type=_Page).data]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PermanentError(f"unreadable model list ({exc}): {body[:200]!r}", status=status) from None

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None, query: Mapping[str, str] | None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            async with self.session.request(
                method, url, data=body, headers=headers, params=query, proxy=self.proxy, proxy_auth=self.proxy_auth
            ) as response:
                return await response.read(), response.status, response.headers
        except asyncio.TimeoutError:  # the total deadline, or connecting / reading timed out
            raise GenerationTimeoutError(self.config.timeout) from None
        except aiohttp.ClientError as exc:  # refused, reset, cut off mid-body
            raise TransientError(f"connection failed: {type(exc).__name__}: {exc}") from exc

    async def generate(self, model: str, request: Request) -> Completion:
        config = self.config
        tokens = config.token_ids and request.prompt_ids is not None
        if tokens:
            refuse_images(request.messages)
        body = _text_body(config, model, request) if tokens else _body(config, model, request)
        options = _options(config, request, tokens)
        if options["extra_body"]:
            body.update(options["extra_body"])
        url = f"{self.base}/completions" if tokens else f"{self.base}/chat/completions"
        raw, status, headers = await self._send("POST", url, msgspec.json.encode(body), options["extra_headers"], options["extra_query"])
        rid = headers.get("x-request-id")
        if status >= 400:
            message = _message(raw)
            error = status_error(status, headers, message)
            if tokens and status == 404:
                raise PermanentError(
                    "the server has no /completions endpoint for token-id prompts (token-level requests need a vLLM "
                    f"server): HTTP 404: {message}",
                    status=404,
                    request_id=rid,
                )
            if tokens and status == 400 and not isinstance(error, ContextLengthError):
                raise token_prompt_refused(message, rid)
            raise error
        completion = _text_completion(raw, status, request.logprobs, rid) if tokens else _completion(raw, status, rid)
        check_budget(completion, self.config.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens, rid)
        server = headers.get(SERVER_HEADER)
        return msgspec.structs.replace(completion, server=server) if server else completion


@asynccontextmanager
async def open_aiohttp_generate(
    config: ClientConfig, model: str | None, stack: Callable[[], Middleware]
) -> AsyncIterator[tuple[Generate, str]]:
    """Yield the :data:`Generate` over aiohttp, wrapped in the middleware
    ``stack()`` makes, and the model's name (``model``, else the server's
    only one). On asyncio the session is on the caller's loop; on trio (or
    anything else) on an asyncio thread, and the stack is made and runs
    there too, so a call crosses threads once, not once per layer's
    checkpoint: on trio the default stack's retry, semaphore and deadline
    cost more CPU than on asyncio, and that CPU came out of the same core
    the thread's loop needed. (Only a stack that is ours goes across: a
    caller's own middleware may hold its loop's primitives.)"""
    if on_asyncio():
        wire = _Wire(config)
        try:
            name = model or _one_model(await wire.models())
            yield stack()(_bound(wire, name)), name
        finally:
            with anyio.CancelScope(shield=True):
                await wire.close()
        return
    thread = AsyncioThread("agentfly-aiohttp")
    try:
        wire = await thread.run(_make(config))
        try:
            name = model or _one_model(await thread.run(wire.models()))
            stacked = await thread.run(_stacked(wire, name, stack))

            async def bridged(request: Request) -> Completion:
                return await thread.run(stacked(request))

            yield bridged, name
        finally:
            with anyio.CancelScope(shield=True):
                await thread.run(wire.close())
    finally:
        thread.stop()


def _bound(wire: _Wire, name: str) -> Generate:
    async def generate(request: Request) -> Completion:
        return await wire.generate(name, request)

    return generate


async def _stacked(wire: _Wire, name: str, stack: Callable[[], Middleware]) -> Callable[[Request], Coroutine[Any, Any, Completion]]:
    # Made on the thread's loop: the stack's semaphore and clocks belong to
    # it. The outer coroutine function is what the bridge runs (it takes a
    # coroutine; a middleware is typed to return any awaitable).
    wrapped = stack()(_bound(wire, name))

    async def stacked(request: Request) -> Completion:
        return await wrapped(request)

    return stacked


async def _make(config: ClientConfig) -> _Wire:
    return _Wire(config)  # made on the loop that will use it
