"""The OpenAI wire format, shared by both wire paths of the client
transport (the SDK's and aiohttp's): the request bodies and options we send,
the msgspec decoders of the answers into our records, the errors an HTTP
status maps to, and the checks an answer must pass. One module owns it, so
the two paths send the same bodies, give the same records and raise the same
errors, and neither imports the other.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from ..configs import ClientConfig, Secret
from ..errors import ConfigError, ContextLengthError, MalformedResponseError, PermanentError, TransientError, TransportError
from ..records import Completion, FunctionCall, NamedToolChoice, Output, Request, ToolCall, Usage
from ._finish import finish_reason

__all__: list[str] = []  # package-internal: client.py and _aiohttp.py import what they use


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


def _api_key(config: ClientConfig) -> str:
    if isinstance(config.api_key, Secret):
        return config.api_key.reveal()
    if config.azure_api_version is not None and os.environ.get("AZURE_OPENAI_API_KEY"):
        return os.environ["AZURE_OPENAI_API_KEY"]  # what the SDK's Azure client reads
    # Local servers (vLLM) accept any key; the SDK refuses to start without one.
    return os.environ.get("OPENAI_API_KEY") or "EMPTY"


def _one_model(names: list[str]) -> str:
    """The server's one model, when the config names none."""
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError("ClientConfig.model", "unset, and the server lists no models")
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    raise ConfigError("ClientConfig.model", f"unset, and the server serves {len(names)} models; choose one of: {shown}")
