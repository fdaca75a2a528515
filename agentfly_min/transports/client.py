"""The OpenAI-compatible client transport (the ``openai`` SDK's async client).

The SDK sends the request; we decode the body with msgspec straight into our
records (the SDK's pydantic parse is skipped, which is most of its per-call
CPU). The SDK's own retries are off: retrying is the retry middleware's job,
and two retry loops would multiply.
"""

from __future__ import annotations

import email.utils
import functools
import importlib
import os
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

import msgspec
import openai

from ..configs import ClientConfig, Secret
from ..errors import ConfigError, ContextLengthError, MalformedResponseError, PermanentError, TransientError, TransportError
from ..local.server_id import HEADER as SERVER_HEADER
from ._chat import refuse_images
from ._finish import finish_reason
from ..middleware import compose, concurrency_limit, estimate_tokens, rate_limit, retry, timeout
from ..middleware.stream import stream_concurrency_limit, stream_rate_limit, stream_retry, stream_timeout
from ..stream import Chunk, Stream, StreamMiddleware, ToolCallDelta
from ..records import (
    Completion,
    FunctionCall,
    Generate,
    Middleware,
    NamedToolChoice,
    Output,
    Request,
    ToolCall,
    Usage,
)

__all__ = [
    "open_client",
    "open_client_stream",
    "client_middleware",
    "client_stream_middleware",
    "raw_client_generate",
    "raw_client_stream",
    "map_openai_error",
]

_TRANSIENT_STATUS = frozenset({408, 409, 429})


# What we read of a chat-completions body. Unknown fields are ignored: servers
# (vLLM, proxies) add their own.
class _WireFunction(msgspec.Struct, frozen=True):
    name: str = ""
    arguments: str = ""


class _WireToolCall(msgspec.Struct, frozen=True):
    function: _WireFunction
    id: str = ""


class _WireMessage(msgspec.Struct, frozen=True):
    content: str | None = None
    tool_calls: list[_WireToolCall] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the name newer vLLM servers use


class _WireTokenLogprob(msgspec.Struct, frozen=True):
    logprob: float


class _WireLogprobs(msgspec.Struct, frozen=True):
    content: list[_WireTokenLogprob] | None = None


class _WireChoice(msgspec.Struct, frozen=True):
    message: _WireMessage
    index: int = 0
    finish_reason: str | None = None
    logprobs: _WireLogprobs | None = None
    token_ids: list[int] | None = None  # vLLM with return_token_ids


class _WirePromptDetails(msgspec.Struct, frozen=True):
    cached_tokens: int | None = None


class _WireCompletionDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int | None = None


class _WireUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _WirePromptDetails | None = None
    completion_tokens_details: _WireCompletionDetails | None = None

    def usage(self) -> Usage:
        prompt, completion = self.prompt_tokens_details, self.completion_tokens_details
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=(prompt.cached_tokens or 0) if prompt is not None else 0,
            reasoning_tokens=(completion.reasoning_tokens or 0) if completion is not None else 0,
        )


class _WireCompletion(msgspec.Struct, frozen=True):
    choices: list[_WireChoice]
    model: str = ""
    usage: _WireUsage | None = None
    prompt_token_ids: list[int] | None = None  # vLLM with return_token_ids


_decoder = msgspec.json.Decoder(_WireCompletion)


# What we read of a /completions body from vLLM with return_token_ids.
class _WireTextLogprobs(msgspec.Struct, frozen=True):
    token_logprobs: list[float | None] | None = None


class _WireTextChoice(msgspec.Struct, frozen=True):
    text: str = ""
    index: int = 0
    finish_reason: str | None = None
    logprobs: _WireTextLogprobs | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class _WireTextCompletion(msgspec.Struct, frozen=True):
    choices: list[_WireTextChoice]
    model: str = ""
    usage: _WireUsage | None = None


_text_decoder = msgspec.json.Decoder(_WireTextCompletion)



def _retry_after(headers: Mapping[str, str]) -> float | None:
    # The SDK parses these too, but only privately; same rules: milliseconds
    # first, then seconds, then an HTTP date.
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(status: int, headers: Mapping[str, str], message: str) -> TransportError:
    """The typed error for an HTTP error status: 408, 409, 429 and 5xx are
    transient (with any ``Retry-After``), a "maximum context length" 400 a
    :class:`ContextLengthError`, the rest permanent; ``x-should-retry``
    overrides the status and ``x-request-id`` is kept."""
    request_id = headers.get("x-request-id")
    text = f"HTTP {status}: {message}"
    should = headers.get("x-should-retry")
    transient = should == "true" or (should != "false" and (status in _TRANSIENT_STATUS or status >= 500))
    if transient:
        return TransientError(text, status=status, retry_after=_retry_after(headers), request_id=request_id)
    if status == 400 and "maximum context length" in message:  # vLLM's and OpenAI's wording
        return ContextLengthError(text, status=status, request_id=request_id)
    return PermanentError(text, status=status, request_id=request_id)


def map_openai_error(error: openai.OpenAIError) -> TransportError:
    """Turn an SDK error into ours: 408, 409, 429, 5xx, timeouts and
    connection failures are transient (with the status and any
    ``Retry-After``); other statuses are permanent; an unreadable body is
    malformed. A server's ``x-should-retry`` header overrides the status;
    its ``x-request-id`` is kept on the error."""
    if isinstance(error, openai.APIResponseValidationError):
        return MalformedResponseError(
            f"unreadable response: {error.message}", status=error.status_code, request_id=error.response.headers.get("x-request-id")
        )
    if isinstance(error, openai.APIStatusError):
        return status_error(error.status_code, error.response.headers, error.message)
    if isinstance(error, openai.APITimeoutError):
        return TransientError("request timed out")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return TransientError(f"connection failed{detail}")
    return TransportError(f"{type(error).__name__}: {error}")


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, NamedToolChoice):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


_REASONING_MODEL = re.compile(r"(?:^|/)(?:o\d|gpt-5)")


def _budget_field(config: ClientConfig, model: str) -> str:
    if config.max_tokens_field != "auto":
        return config.max_tokens_field
    return "max_completion_tokens" if _REASONING_MODEL.search(model) else "max_tokens"


def _sampling(config: ClientConfig, request: Request) -> dict[str, Any]:
    # What both endpoints take at the top level.
    body: dict[str, Any] = {
        "temperature": config.temperature if request.temperature is None else request.temperature,
        "top_p": config.top_p if request.top_p is None else request.top_p,
    }
    if request.n != 1:
        body["n"] = request.n
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in request.logit_bias.items()}
    if request.presence_penalty is not None:
        body["presence_penalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        body["frequency_penalty"] = request.frequency_penalty
    return body


def _body(config: ClientConfig, model: str, request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": msgspec.to_builtins(request.messages),
        **_sampling(config, request),
        _budget_field(config, model): config.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens,
    }
    if request.tools:
        body["tools"] = msgspec.to_builtins(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.logprobs:
        body["logprobs"] = True
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return body


def _text_body(config: ClientConfig, model: str, request: Request) -> dict[str, Any]:
    assert request.prompt_ids is not None
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(request.prompt_ids),
        **_sampling(config, request),
        "max_tokens": config.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens,
    }
    if request.logprobs:
        body["logprobs"] = 0  # the sampled token's own logprob, no alternatives
    return body


def _options(config: ClientConfig, request: Request, tokens: bool) -> dict[str, Any]:
    """The SDK's ``extra_*`` arguments: vLLM's extensions when asked for,
    then the config's extras, then the request's, each over the last."""
    body: dict[str, Any] = {}
    if request.ignore_eos:
        body["ignore_eos"] = True
    if request.regex is not None:
        body["structured_outputs"] = {"regex": request.regex}
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.min_p is not None:
        body["min_p"] = request.min_p
    if request.repetition_penalty is not None:
        body["repetition_penalty"] = request.repetition_penalty
    if tokens:
        body["return_token_ids"] = True
        if request.response_format is not None:  # not an SDK argument of completions
            body["response_format"] = request.response_format
    body.update(config.extra_body or {})
    body.update(request.extra_body or {})
    # The session key rides on every turn, so a sticky router keeps a
    # trajectory on the server that holds its prefix cache.
    # A request without a session gets a key of its own: with none, vLLM's
    # router hashed the empty key and sent every such request to one server.
    headers: dict[str, str] = {}
    if config.session_header is not None:
        headers[config.session_header] = request.request_id if request.request_id is not None else uuid.uuid4().hex
    headers.update(config.extra_headers or {})
    headers.update(request.extra_headers or {})
    query = {**(config.extra_query or {}), **(request.extra_query or {})}
    return {"extra_body": body or None, "extra_headers": headers or None, "extra_query": query or None}


def _output(choice: _WireChoice) -> Output:
    message = choice.message
    calls = tuple(
        ToolCall(id=call.id, function=FunctionCall(name=call.function.name, arguments=call.function.arguments))
        for call in message.tool_calls or ()
    )
    logprobs = None
    if choice.logprobs is not None and choice.logprobs.content is not None:
        logprobs = tuple(item.logprob for item in choice.logprobs.content)
    return Output(
        text=message.content or "",
        finish_reason=finish_reason(choice.finish_reason),
        tool_calls=calls,
        reasoning=message.reasoning_content if message.reasoning_content is not None else message.reasoning,
        token_ids=tuple(choice.token_ids) if choice.token_ids is not None else None,
        logprobs=logprobs,
    )


def _completion(body: bytes, status: int, rid: str | None = None) -> Completion:
    try:
        wire = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedResponseError(f"unreadable chat completion ({exc}): {body[:200]!r}", status=status, request_id=rid) from None
    if not wire.choices:
        raise MalformedResponseError(f"the chat completion has no choices: {body[:200]!r}", status=status, request_id=rid)
    choices = sorted(wire.choices, key=lambda c: c.index)
    usage = wire.usage or _WireUsage()
    return Completion(
        outputs=tuple(_output(c) for c in choices),
        usage=usage.usage(),
        model=wire.model,
        prompt_ids=tuple(wire.prompt_token_ids) if wire.prompt_token_ids is not None else None,
    )


def _text_output(choice: _WireTextChoice, want_logprobs: bool, status: int, rid: str | None) -> Output:
    if choice.token_ids is None:
        raise PermanentError(
            "the server returned no token ids for a token-id prompt: token-level requests (ClientConfig.token_ids) "
            "need a vLLM server that honours return_token_ids",
            status=status,
            request_id=rid,
        )
    logprobs = None
    if want_logprobs:
        given = choice.logprobs.token_logprobs if choice.logprobs is not None else None
        if given is None or len(given) != len(choice.token_ids) or any(lp is None for lp in given):
            raise MalformedResponseError("the server returned no logprob for every sampled token", status=status, request_id=rid)
        logprobs = tuple(float(lp) for lp in given if lp is not None)
    return Output(
        text=choice.text,
        finish_reason=finish_reason(choice.finish_reason),
        token_ids=tuple(choice.token_ids),
        logprobs=logprobs,
    )


def _text_completion(body: bytes, status: int, want_logprobs: bool, rid: str | None = None) -> Completion:
    try:
        wire = _text_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedResponseError(f"unreadable completion ({exc}): {body[:200]!r}", status=status, request_id=rid) from None
    if not wire.choices:
        raise MalformedResponseError(f"the completion has no choices: {body[:200]!r}", status=status, request_id=rid)
    choices = sorted(wire.choices, key=lambda c: c.index)
    usage = wire.usage or _WireUsage()
    prompt = choices[0].prompt_token_ids
    return Completion(
        outputs=tuple(_text_output(c, want_logprobs, status, rid) for c in choices),
        usage=usage.usage(),
        model=wire.model,
        prompt_ids=tuple(prompt) if prompt is not None else None,
    )


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


def token_prompt_refused(message: str, rid: str | None) -> PermanentError:
    """The error for a token-id prompt a server answered with HTTP 400."""
    if "vocab" in message.lower():  # vLLM: "Token id 5000 is out of vocabulary"
        reason = "a prompt token id is outside the model's vocabulary (is the client's tokenizer the server's?)"
    else:
        reason = "the server refused a token-id prompt (token-level requests need a vLLM server)"
    return PermanentError(f"{reason}: HTTP 400: {message}", status=400, request_id=rid)


def check_budget(completion: Completion, budget: int, rid: str | None) -> None:
    """Refuse a completion longer than the budget it was asked for: a server
    that returns 501 tokens for 50 breaks every budget downstream (an RL
    trainer's response_length), and its text is not what was asked."""
    for output in completion.outputs:
        if output.token_ids is not None:
            sampled = len(output.token_ids)
        elif len(completion.outputs) == 1:
            sampled = completion.usage.completion_tokens
        else:
            continue
        if sampled > budget:
            raise MalformedResponseError(f"the server returned {sampled} tokens for a budget of {budget}", request_id=rid)


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


def _api_key(config: ClientConfig) -> str:
    if isinstance(config.api_key, Secret):
        return config.api_key.reveal()
    if config.azure_api_version is not None and os.environ.get("AZURE_OPENAI_API_KEY"):
        return os.environ["AZURE_OPENAI_API_KEY"]  # what the SDK's Azure client reads
    # Local servers (vLLM) accept any key; the SDK refuses to start without one.
    return os.environ.get("OPENAI_API_KEY") or "EMPTY"


async def _only_model(client: openai.AsyncOpenAI) -> str:
    try:
        page = await client.models.list()
    except openai.OpenAIError as exc:
        raise map_openai_error(exc) from exc
    return _one_model([entry.id for entry in page.data])


def _one_model(names: list[str]) -> str:
    """The server's one model, when the config names none."""
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError("ClientConfig.model", "unset, and the server lists no models")
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    raise ConfigError("ClientConfig.model", f"unset, and the server serves {len(names)} models; choose one of: {shown}")


def _use_aiohttp(config: ClientConfig, http_client: Any) -> bool:
    if config.http_library == "aiohttp":
        if http_client is not None:
            raise ConfigError("open_client.http_client", 'an HTTP client of your own goes through the openai SDK: http_library "openai" or "auto"')
        return True
    return config.http_library == "auto" and config.azure_api_version is None and http_client is None


def _make_client(config: ClientConfig, http_client: Any) -> openai.AsyncOpenAI:
    options: dict[str, Any] = {
        "api_key": _api_key(config),
        "organization": config.organization,
        "project": config.project,
        "max_retries": 0,
        "timeout": config.timeout,
        "default_headers": config.default_headers,
    }
    if http_client is not None:
        options["http_client"] = http_client
    if config.azure_api_version is not None:
        # The Azure client puts the deployment (our model) in the path and
        # the API version in the query, and sends the key as ``api-key``.
        return openai.AsyncAzureOpenAI(azure_endpoint=config.base_url, api_version=config.azure_api_version, **options)
    return openai.AsyncOpenAI(base_url=config.base_url, **options)


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
    # aiohttp holds each attempt to config.timeout itself (see _Wire)
    stack = client_middleware(config, attempt_timeout=not lean) if middleware is None else middleware
    if lean:
        from ._aiohttp import open_aiohttp_generate

        async with open_aiohttp_generate(config, model or config.model) as (raw, _):
            yield stack(raw)
        return
    client = _make_client(config, http_client)
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
    client = _make_client(config, http_client)
    async with client:
        name = model or config.model
        if name is None:
            name = await _only_model(client)
        stack = client_stream_middleware(config) if middleware is None else middleware
        yield stack(raw_client_stream(client, config, name))
