"""Mistral's chat format, through the ``mistral_common`` package.

``mistral_common`` (installed with vLLM) ships Mistral's real tokenizers
(Tekken, SentencePiece) and renders their instruct format, tools included;
this template uses it for every token, so nothing here re-implements
Mistral's format. The tokenizer a Mistral episode takes is a
``mistral_common`` ``MistralTokenizer`` (``MistralTokenizer.from_file`` on
a model's ``tekken.json``, or ``.from_model(...)``).

A sampled call is ``[TOOL_CALLS]`` then a JSON list of ``{"name",
"arguments", "id"}``; Mistral's ids are nine letters or digits, and a call
the model wrote without one gets one in that shape. Tool results go in
``[TOOL_RESULTS]…[/TOOL_RESULTS]`` right after the turn's ``</s>``, and the
next turn follows them directly: that is the whole splice. ``[TOOL_CALLS]``
is a control token that a transport's text drops, so turns are read from
their ids (``decode``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..records import Message, ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn
from .hermes import MAX_CALLS, parse_call_object, too_deep

__all__ = ["TEMPLATE", "parse", "mistral_messages", "tekken"]

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def tekken() -> Any:
    """The Tekken tokenizer ``mistral_common`` ships (the one of Mistral
    NeMo and later models), loaded offline."""
    from pathlib import Path

    import mistral_common
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"))


def _call_id(turn: int, index: int) -> str:
    return f"c{turn:04d}{index:04d}"[-9:].rjust(9, "0")


def mistral_messages(messages: Sequence[Message]) -> list[Any]:
    """Our messages as ``mistral_common``'s."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
    from mistral_common.protocol.instruct.tool_calls import FunctionCall, ToolCall

    out: list[Any] = []
    for message in messages:
        if message.role in ("system", "developer"):
            out.append(SystemMessage(content=message.text))
        elif message.role == "user":
            out.append(UserMessage(content=message.text))
        elif message.role == "assistant":
            calls = [
                ToolCall(id=call.id, function=FunctionCall(name=call.function.name, arguments=call.function.arguments))
                for call in message.calls
            ]
            out.append(AssistantMessage(content=message.text or None, tool_calls=calls or None))
        else:
            out.append(ToolMessage(content=message.text, tool_call_id=message.tool_call_id))
    return out


def _tools(tools: Sequence[ToolSchema]) -> list[Any]:
    from mistral_common.protocol.instruct.tool_calls import Function, Tool

    return [
        Tool(function=Function(name=t.function.name, description=t.function.description, parameters=t.function.parameters))
        for t in tools
    ]


def _mistral(tokenizer: Any) -> Any:
    """The mistral_common ``MistralTokenizer`` itself, or the one that
    transformers' ``MistralCommonBackend`` wraps (what verl and
    ``AutoTokenizer`` load for a Mistral model folder)."""
    if hasattr(tokenizer, "encode_chat_completion"):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if hasattr(inner, "encode_chat_completion") else tokenizer


def _prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = ChatCompletionRequest(messages=mistral_messages(messages), tools=_tools(tools) or None)
    ids: list[int] = _mistral(tokenizer).encode_chat_completion(request).tokens
    return ids


def _between(tokenizer: Any, turn: Turn) -> list[int]:
    from mistral_common.protocol.instruct.messages import ToolMessage

    instruct = _mistral(tokenizer).instruct_tokenizer
    eos = instruct.tokenizer.eos_id
    ids: list[int] = [] if turn.sampled and turn.sampled[-1] == eos else [eos]
    for result in turn.results:
        tokens, _, _ = instruct.encode_tool_message(ToolMessage(content=result.text, tool_call_id=result.tool_call_id), False)
        ids.extend(tokens)
    return ids


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

    inner = _mistral(tokenizer).instruct_tokenizer.tokenizer
    body = list(ids[:-1] if ids and ids[-1] == inner.eos_id else ids)
    text: str = inner.decode(body, special_token_policy=SpecialTokenPolicy.KEEP)
    return text


def parse(text: str) -> ParsedTurn:
    """Content is what comes before the first ``[TOOL_CALLS]``; the calls
    after it are in either of Mistral's formats: a JSON list of calls (or one
    call), each with its 9-character ``id`` (tokenizers v3 to v7), or
    ``name[ARGS]{...}`` per call, each after its own ``[TOOL_CALLS]``, with
    ``[CALL_ID]id`` before ``[ARGS]`` in v13 (v11 and later). In the JSON
    format a call without an id is malformed: its result must name an id
    (mistral_common refuses one without), and an id the model never wrote
    would be in the result and not in the call. Never raises; linear."""
    at = text.find(TOOL_CALLS)
    if at < 0:
        return ParsedTurn(content=text)
    content, body = text[:at].strip(), text[at + len(TOOL_CALLS) :].strip()
    if body[:1] in ("[", "{"):
        return ParsedTurn(content=content, calls=_json_calls(body))
    calls: list[ParsedCall | MalformedToolCall] = []
    for part in body.split(TOOL_CALLS)[: MAX_CALLS + 1]:
        calls.append(_args_call(part.strip()))
    return ParsedTurn(content=content, calls=tuple(calls))


def _json_calls(body: str) -> tuple[ParsedCall | MalformedToolCall, ...]:
    if too_deep(body):
        return (MalformedToolCall(raw=body, reason="JSON nested deeper than the limit"),)
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except ValueError as exc:
        return (MalformedToolCall(raw=body, reason=f"not valid JSON ({exc})"),)
    items = value if isinstance(value, list) else [value]
    spans = _item_spans(body[:end]) if isinstance(value, list) else [body[:end]]
    calls: list[ParsedCall | MalformedToolCall] = []
    for item, raw in zip(items[: MAX_CALLS + 1], spans, strict=False):
        call = parse_call_object(raw)
        if isinstance(call, ParsedCall):
            given = item.get("id") if isinstance(item, dict) else None
            if not (isinstance(given, str) and _ID.match(given)):
                call = MalformedToolCall(raw=raw, reason='a Mistral call needs its 9-character id ("id": "a1b2c3d4e"), written by the model')
            else:
                call = ParsedCall(name=call.name, arguments=call.arguments, id=given)
        calls.append(call)
    return tuple(calls)


def _args_call(part: str) -> ParsedCall | MalformedToolCall:
    """One ``name[ARGS]{...}`` (or ``name[CALL_ID]id[ARGS]{...}``) call."""
    args_at = part.find(ARGS)
    if args_at < 0:
        return MalformedToolCall(raw=part, reason="expected name[ARGS]{arguments} after [TOOL_CALLS]")
    head, arguments = part[:args_at], part[args_at + len(ARGS) :].strip()
    call_id: str | None = None
    if CALL_ID in head:
        head, given = head.split(CALL_ID, 1)
        call_id = given.strip() or None
    name = head.strip()
    if not name:
        return MalformedToolCall(raw=part, reason="the call has no function name before [ARGS]")
    parsed = parse_call_object(json.dumps({"name": name}, ensure_ascii=False)[:-1] + ', "arguments": ' + arguments + "}")
    if isinstance(parsed, MalformedToolCall):
        return MalformedToolCall(raw=part, reason=parsed.reason)
    return ParsedCall(name=parsed.name, arguments=parsed.arguments, id=call_id)


def _item_spans(array: str) -> list[str]:
    """The raw text of each element of a JSON array (already known valid)."""
    decoder = json.JSONDecoder()
    spans: list[str] = []
    at = array.index("[") + 1
    while True:
        while at < len(array) and array[at] in " \t\r\n,":
            at += 1
        if at >= len(array) or array[at] == "]":
            return spans
        _, end = decoder.raw_decode(array, at)
        spans.append(array[at:end])
        at = end


def _check(tokenizer: Any) -> None:
    tokenizer = _mistral(tokenizer)
    if not hasattr(tokenizer, "encode_chat_completion") or not hasattr(tokenizer, "instruct_tokenizer"):
        raise ValueError(f"the mistral template needs a mistral_common MistralTokenizer, not a {type(tokenizer).__name__}")


TEMPLATE = Template(
    name="mistral",
    tool_format="mistral ([TOOL_CALLS] JSON list with 9-character ids; or name[ARGS]{...})",
    reasoning="none",
    prompt_ids=_prompt_ids,
    between_ids=_between,
    parse=parse,
    check=_check,
    decode=_decode,
    call_id=_call_id,
)
