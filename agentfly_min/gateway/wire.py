"""The OpenAI chat-completions wire format as the gateway serves it: the
request body it reads, the completion and stream chunks it writes, and
errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``),
which every OpenAI client turns into its own typed exception."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

from ..records import Message, NamedToolChoice, ToolCall, ToolChoice, ToolSchema, Usage

__all__ = ["ChatBody", "Reply", "error_reply", "decode_body", "completion_body", "first_chunk", "stream_chunks", "stream_error", "models_body", "tool_choice"]


class _StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    include_usage: bool = False


class ChatBody(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway reads of a chat-completions request. Fields it does
    not know (``store``, ``metadata``, ``parallel_tool_calls``...) are
    ignored, as OpenAI-compatible servers do. ``structured_outputs``, ``guided_regex``
    (a regex the answer must match) and ``ignore_eos`` are vLLM's extensions,
    taken as vLLM's server takes them."""

    messages: tuple[Message, ...]
    model: str = ""
    tools: tuple[ToolSchema, ...] | None = None
    tool_choice: Any = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_regex: str | None = None
    ignore_eos: bool | None = None


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP answer: status and JSON body."""

    status: int
    body: bytes


ErrorType = Literal["invalid_request_error", "not_found_error", "conflict_error", "server_error", "service_unavailable"]


def error_reply(status: int, message: str, *, kind: ErrorType = "invalid_request_error", code: str | None = None, param: str | None = None) -> Reply:
    """An error in OpenAI's shape."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Reply(status=status, body=msgspec.json.encode(body))


def decode_body(body: bytes) -> ChatBody | Reply:
    """The request body, or a 400 saying what is wrong with it."""
    try:
        return msgspec.json.decode(body, type=ChatBody)
    except msgspec.ValidationError as exc:
        return error_reply(400, f"invalid request: {exc}", code="invalid_request")
    except msgspec.DecodeError as exc:
        return error_reply(400, f"the body is not valid JSON: {exc}", code="invalid_json")


def tool_choice(value: Any) -> ToolChoice | None | Reply:
    """OpenAI's ``tool_choice`` as ours (a named function, or a mode)."""
    if value is None or value in ("auto", "none", "required"):
        return value  # type: ignore[no-any-return]
    if isinstance(value, dict):
        function = value.get("function")
        if value.get("type") == "function" and isinstance(function, dict) and isinstance(function.get("name"), str):
            return NamedToolChoice(name=function["name"])
    return error_reply(400, f"tool_choice must be auto, none, required or a named function, not {value!r}", param="tool_choice")


def _message(content: str, reasoning: str | None, calls: tuple[ToolCall, ...]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [msgspec.to_builtins(call) for call in calls]
    return message


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}


def completion_body(ident: str, model: str, content: str, reasoning: str | None, calls: tuple[ToolCall, ...], finish: str, usage: Usage) -> bytes:
    """A ``chat.completion`` object."""
    return msgspec.json.encode(
        {
            "id": ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": _message(content, reasoning, calls), "logprobs": None, "finish_reason": finish}],
            "usage": _usage(usage),
        }
    )


def _chunk(ident: str, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def first_chunk(ident: str, model: str) -> bytes:
    """The chunk that opens a stream (the role), sent before the turn is sampled."""
    return _chunk(ident, model, {"role": "assistant", "content": ""})


def stream_chunks(
    ident: str, model: str, content: str, reasoning: str | None, calls: tuple[ToolCall, ...], finish: str, usage: Usage | None
) -> bytes:
    """The rest of a stream for a sampled turn: reasoning, content, each
    tool call, the finish reason, usage if asked, and ``[DONE]``."""
    parts: list[bytes] = []
    if reasoning:
        parts.append(_chunk(ident, model, {"reasoning_content": reasoning}))
    if content:
        parts.append(_chunk(ident, model, {"content": content}))
    for index, call in enumerate(calls):
        delta = {"index": index, "id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
        parts.append(_chunk(ident, model, {"tool_calls": [delta]}))
    parts.append(_chunk(ident, model, {}, finish))
    if usage is not None:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": [], "usage": _usage(usage)}
        parts.append(b"data: " + msgspec.json.encode(payload) + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def stream_error(reply: Reply) -> bytes:
    """An error after a stream began: one event carrying it, then the end."""
    return b"data: " + reply.body + b"\n\ndata: [DONE]\n\n"


def models_body(model: str) -> bytes:
    return msgspec.json.encode({"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "agentfly_min"}]})
