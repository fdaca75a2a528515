"""The OpenAI-compatible client transport (the ``openai`` SDK's async client).

The SDK sends the request; we decode the body with msgspec straight into our
records (the SDK's pydantic parse is skipped, which is most of its per-call
CPU). The SDK's own retries are off: retrying is the retry middleware's job,
and two retry loops would multiply.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import msgspec
import openai

from ..configs import ClientConfig
from ..errors import ConfigError, MalformedResponseError, PermanentError, TransientError
from ..local.server_id import HEADER as SERVER_HEADER
from ..templates.chat import refuse_images
from ._finish import finish_reason
from ._sdk import make_client, map_openai_error
from ._openai_wire import (
    _TRANSIENT_STATUS,
    _WireLogprobs,
    _WireTextLogprobs,
    _WireUsage,
    _body,
    _completion,
    _one_model,
    _options,
    _text_body,
    _text_completion,
    check_budget,
    token_prompt_refused,
)
from ..middleware import compose, concurrency_limit, estimate_tokens, rate_limit, retry, timeout
from ..middleware.stream import stream_concurrency_limit, stream_rate_limit, stream_retry, stream_timeout
from ..stream import Chunk, Stream, StreamMiddleware, ToolCallDelta
from ..records import Completion, Generate, Middleware, Request

__all__ = [
    "open_client",
    "open_client_stream",
    "client_middleware",
    "client_stream_middleware",
    "raw_client_generate",
    "raw_client_stream",
    "map_openai_error",
]


def raw_client_generate(client: openai.AsyncOpenAI, config: ClientConfig, model: str) -> Generate:
    """One call, no middleware: the bottom of the stack. A request with
    ``prompt_ids`` goes to ``/completions`` as token ids when
    ``config.token_ids`` is on (sampled ids and logprobs come back);
    everything else to ``/chat/completions``. The request id goes in
    ``config.session_header``; the server that answered, when it says
    (``x-agentfly-server``), is kept on the completion."""
    chat = client.chat.completions.with_raw_response.create
    text = client.completions.with_raw_response.create

    async def generate(request: Request) -> Completion:
        tokens = config.token_ids and request.prompt_ids is not None
        if tokens:
            refuse_images(request.messages)
        try:
            if tokens:
                response: Any = await text(**_text_body(config, model, request), **_options(config, request, True))
            else:
                response = await chat(**_body(config, model, request), **_options(config, request, False))
        except openai.NotFoundError as exc:
            if tokens:
                raise PermanentError(
                    "the server has no /completions endpoint for token-id prompts (token-level requests need a vLLM "
                    f"server): HTTP 404: {exc.message}",
                    status=404,
                ) from exc
            raise map_openai_error(exc) from exc
        except openai.BadRequestError as exc:
            if tokens and "maximum context length" not in exc.message:
                raise token_prompt_refused(exc.message, None) from exc
            raise map_openai_error(exc) from exc
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from exc
        status = response.http_response.status_code
        rid = response.http_response.headers.get("x-request-id")
        if tokens:
            completion = _text_completion(response.content, status, request.logprobs, rid)
        else:
            completion = _completion(response.content, status, rid)
        check_budget(completion, config.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens, rid)
        server = response.http_response.headers.get(SERVER_HEADER)
        return msgspec.structs.replace(completion, server=server) if server else completion

    return generate


def client_middleware(config: ClientConfig, *, attempt_timeout: bool = True) -> Middleware:
    """The stack :func:`open_client` puts around the raw call by default,
    outermost first: retry, concurrency limit, rate limit, per-attempt
    timeout. (Concurrency sits outside the rate limit so that slots freed at
    once cannot release a burst; the timeout sits inside the retry so each
    attempt gets ``config.timeout``.)

    ``attempt_timeout=False`` leaves the timeout layer out, for a raw call
    that enforces ``config.timeout`` on each attempt itself and raises
    :class:`GenerationTimeoutError` as the layer would: the aiohttp wire path
    does (aiohttp's own total deadline), and :func:`open_client` uses it so
    there. The second deadline cost 20-30 us of CPU a request at 256 in
    flight, about a tenth of what the lean path spends on one."""
    layers: list[Middleware] = [retry(max_retries=config.max_retries, max_retry_after=config.max_retry_after)]
    if config.max_concurrency is not None:
        layers.append(concurrency_limit(config.max_concurrency))
    if config.max_requests_per_minute is not None or config.max_tokens_per_minute is not None:
        budget = config.max_new_tokens
        layers.append(
            rate_limit(
                config.max_requests_per_minute,
                tokens_per_minute=config.max_tokens_per_minute,
                burst=config.rate_limit_burst,
                estimate=lambda request: estimate_tokens(request, budget),
            )
        )
    if attempt_timeout:
        layers.append(timeout(config.timeout))
    return compose(*layers)


async def _only_model(client: openai.AsyncOpenAI) -> str:
    try:
        page = await client.models.list()
    except openai.OpenAIError as exc:
        raise map_openai_error(exc) from exc
    return _one_model([entry.id for entry in page.data])


def _use_aiohttp(config: ClientConfig, http_client: Any) -> bool:
    if config.http_library == "aiohttp":
        if http_client is not None:
            raise ConfigError("open_client.http_client", 'an HTTP client of your own goes through the openai SDK: http_library "openai" or "auto"')
        return True
    return config.http_library == "auto" and config.azure_api_version is None and http_client is None


@asynccontextmanager
async def open_client(
    config: ClientConfig,
    *,
    model: str | None = None,
    middleware: Middleware | None = None,
    http_client: Any = None,
    tokenizer: Any = None,
) -> AsyncIterator[Generate]:
    """Open an ``openai.AsyncOpenAI`` client and yield a :data:`Generate`.

    ``model`` overrides ``config.model``; with neither, the server's model
    is used if it lists exactly one (looked up on entry; with several, a
    :class:`ConfigError` names them). ``middleware`` replaces the
    default stack (:func:`client_middleware`); pass ``compose()`` for the raw
    call alone (over aiohttp it still holds each call to ``config.timeout``).
    ``http_client`` is an HTTP client of the installed SDK's kind
    (``httpx.AsyncClient`` under openai 1.x and 2.x, ``httpx2.AsyncClient``
    under 3.x), for proxies, certificates or mTLS;
    the SDK closes it on exit, as it closes its own.

    Plain calls go over aiohttp unless ``config.http_library`` says
    ``"openai"`` or the SDK is needed (Azure, an ``http_client``).

    With ``config.token_ids`` and the ``tokenizer`` the agent loop renders
    with, the server is asked on entry to tokenize a probe text, and a
    tokenizer that makes other ids than the server's is refused
    (:class:`TokenizerMismatchError`): the ids would be read as other text.
    """
    if config.token_ids and tokenizer is not None:
        from ._tokenizer_check import check_tokenizer

        await check_tokenizer(config, tokenizer, model=model or config.model)
    lean = _use_aiohttp(config, http_client)
    if lean:
        from ._aiohttp import open_aiohttp_generate

        # aiohttp holds each attempt to config.timeout itself (see _Wire)
        inner = (lambda: client_middleware(config, attempt_timeout=False)) if middleware is None else compose
        async with open_aiohttp_generate(config, model or config.model, inner) as (generate, _):
            yield generate if middleware is None else middleware(generate)
        return
    stack = client_middleware(config) if middleware is None else middleware
    client = make_client(config, http_client)
    async with client:
        name = model or config.model
        if name is None:
            name = await _only_model(client)
        yield stack(raw_client_generate(client, config, name))


# --- streaming ------------------------------------------------------------------------


class _WireDeltaFunction(msgspec.Struct, frozen=True):
    name: str | None = None
    arguments: str | None = None


class _WireDeltaToolCall(msgspec.Struct, frozen=True):
    index: int = 0
    id: str | None = None
    function: _WireDeltaFunction | None = None


class _WireDelta(msgspec.Struct, frozen=True):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_WireDeltaToolCall] | None = None


class _WireStreamChoice(msgspec.Struct, frozen=True):
    index: int = 0
    delta: _WireDelta | None = None  # chat
    text: str | None = None  # completions
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None  # chat's {"content": [...]} or completions' {"token_logprobs": [...]}
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class _WireError(msgspec.Struct, frozen=True):
    message: str = ""
    code: int | str | None = None


class _WireStreamChunk(msgspec.Struct, frozen=True):
    choices: list[_WireStreamChoice] = []
    model: str = ""
    usage: _WireUsage | None = None
    error: _WireError | None = None


_chunk_decoder = msgspec.json.Decoder(_WireStreamChunk)


def _chunk_logprobs(raw: dict[str, Any] | None) -> tuple[float, ...] | None:
    if raw is None:
        return None
    try:
        if "token_logprobs" in raw:
            text = msgspec.convert(raw, _WireTextLogprobs)
            return tuple(float(lp) for lp in text.token_logprobs or () if lp is not None)
        chat = msgspec.convert(raw, _WireLogprobs)
    except msgspec.ValidationError as exc:
        raise MalformedResponseError(f"unreadable logprobs in a stream chunk ({exc})") from None
    return tuple(item.logprob for item in chat.content or ())


def _stream_chunk(wire: _WireStreamChunk, server: str | None, status: int, rid: str | None = None) -> list[Chunk]:
    if wire.error is not None:  # vLLM reports a failure mid-stream as a data line
        code = wire.error.code if isinstance(wire.error.code, int) else None
        error_type = TransientError if code is None or code >= 500 or code in _TRANSIENT_STATUS else PermanentError
        raise error_type(f"the stream failed: {wire.error.message}", status=code, request_id=rid)
    chunks: list[Chunk] = []
    for choice in wire.choices:
        delta = choice.delta
        text = choice.text if choice.text is not None else (delta.content if delta is not None and delta.content else "")
        reasoning = (delta.reasoning_content or delta.reasoning or "") if delta is not None else ""
        calls = tuple(
            ToolCallDelta(
                index=call.index,
                id=call.id,
                name=call.function.name if call.function is not None else None,
                arguments=(call.function.arguments or "") if call.function is not None else "",
            )
            for call in ((delta.tool_calls or []) if delta is not None else [])
        )
        chunks.append(
            Chunk(
                index=choice.index,
                text=text or "",
                token_ids=tuple(choice.token_ids or ()),
                logprobs=_chunk_logprobs(choice.logprobs),
                reasoning=reasoning,
                tool_calls=calls,
                finish_reason=finish_reason(choice.finish_reason) if choice.finish_reason is not None else None,
                prompt_ids=tuple(choice.prompt_token_ids) if choice.prompt_token_ids is not None else None,
                model=wire.model,
                server=server,
            )
        )
    if wire.usage is not None:
        chunks.append(Chunk(usage=wire.usage.usage(), model=wire.model, server=server))
    return chunks


async def _sse_chunks(response: Any, status: int) -> AsyncGenerator[Chunk, None]:
    server = response.headers.get(SERVER_HEADER)
    rid = response.headers.get("x-request-id")
    try:
        async for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                wire = _chunk_decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise MalformedResponseError(f"unreadable stream chunk ({exc}): {data[:200]!r}", status=status, request_id=rid) from None
            for chunk in _stream_chunk(wire, server, status, rid):
                yield chunk
    except openai.OpenAIError as exc:
        raise map_openai_error(exc) from exc
    except _http_errors() as exc:  # the connection dropped mid-stream
        raise TransientError(f"the stream broke off: {type(exc).__name__}: {exc}") from exc


@functools.cache
def _http_errors() -> tuple[type[Exception], ...]:
    """The HTTP library's errors, which reading a streamed body raises as
    they are: ``httpx`` under openai 1.x and 2.x, ``httpx2`` under 3.x."""
    found: list[type[Exception]] = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def raw_client_stream(client: openai.AsyncOpenAI, config: ClientConfig, model: str) -> Stream:
    """The streaming twin of :func:`raw_client_generate`: chat completions
    with ``stream=True`` (or, with ``config.token_ids`` and ``prompt_ids``,
    completions with token ids, sampled ids coming back in the chunks),
    read line by line with msgspec. Leaving the stream's block closes the
    HTTP response."""

    @asynccontextmanager
    async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
        tokens = config.token_ids and request.prompt_ids is not None
        if tokens:
            refuse_images(request.messages)
        try:
            if tokens:
                opened: Any = client.completions.with_streaming_response.create(
                    **_text_body(config, model, request), stream=True, stream_options={"include_usage": True},
                    **_options(config, request, True),
                )  # fmt: skip
            else:
                opened = client.chat.completions.with_streaming_response.create(
                    **_body(config, model, request), stream=True, stream_options={"include_usage": True},
                    **_options(config, request, False),
                )  # fmt: skip
            async with opened as response:
                async with aclosing(_sse_chunks(response, response.status_code)) as chunks:
                    yield chunks
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from exc

    return stream


def client_stream_middleware(config: ClientConfig) -> StreamMiddleware:
    """The default stack around a streaming call, outermost first: retry
    (before the first chunk only), concurrency limit, rate limit, and a
    deadline of ``config.timeout`` for the first chunk and between chunks."""
    layers: list[StreamMiddleware] = [stream_retry(max_retries=config.max_retries, max_retry_after=config.max_retry_after)]
    if config.max_concurrency is not None:
        layers.append(stream_concurrency_limit(config.max_concurrency))
    if config.max_requests_per_minute is not None or config.max_tokens_per_minute is not None:
        budget = config.max_new_tokens
        layers.append(
            stream_rate_limit(
                config.max_requests_per_minute,
                tokens_per_minute=config.max_tokens_per_minute,
                burst=config.rate_limit_burst,
                estimate=lambda request: estimate_tokens(request, budget),
            )
        )
    layers.append(stream_timeout(first_chunk=config.timeout, idle=config.timeout))
    return compose(*layers)


@asynccontextmanager
async def open_client_stream(
    config: ClientConfig, *, model: str | None = None, middleware: StreamMiddleware | None = None, http_client: Any = None
) -> AsyncIterator[Stream]:
    """Open an ``openai.AsyncOpenAI`` client and yield a :data:`Stream` over
    it (wrapped in :func:`client_stream_middleware` unless ``middleware``
    replaces it); ``http_client`` as for :func:`open_client`."""
    client = make_client(config, http_client)
    async with client:
        name = model or config.model
        if name is None:
            name = await _only_model(client)
        stack = client_stream_middleware(config) if middleware is None else middleware
        yield stack(raw_client_stream(client, config, name))
