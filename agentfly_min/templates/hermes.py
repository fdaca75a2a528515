"""Parsing tool calls that a model wrote in the Hermes format.

``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number per
turn. A block that is not a JSON object with a string ``name`` (and an
object, or a JSON string holding one, as ``arguments``), or a
``<tool_call>`` left unclosed, becomes a :class:`MalformedToolCall` that says
what is wrong; parsing never raises.
"""

from __future__ import annotations

import json
import re

import msgspec

__all__ = ["ParsedCall", "MalformedToolCall", "ParsedTurn", "parse_tool_calls"]

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_OPEN = "<tool_call>"


class ParsedCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: str  # JSON text of an object


class MalformedToolCall(msgspec.Struct, frozen=True, kw_only=True):
    raw: str
    reason: str


class ParsedTurn(msgspec.Struct, frozen=True, kw_only=True):
    """The text before the first tool call, and the calls in order."""

    content: str
    calls: tuple[ParsedCall | MalformedToolCall, ...] = ()


def _parse_block(raw: str) -> ParsedCall | MalformedToolCall:
    body = raw.strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return MalformedToolCall(raw=body, reason=f"not valid JSON ({exc.msg} at position {exc.pos})")
    if not isinstance(obj, dict):
        return MalformedToolCall(raw=body, reason="expected a JSON object with `name` and `arguments`")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return MalformedToolCall(raw=body, reason="missing a string `name`")
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return MalformedToolCall(raw=body, reason="`arguments` is a string that is not JSON")
    if not isinstance(arguments, dict):
        return MalformedToolCall(raw=body, reason="`arguments` must be a JSON object")
    return ParsedCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str) -> ParsedTurn:
    """Split a model's turn into its plain content and its tool calls."""
    first = text.find(_OPEN)
    if first < 0:
        return ParsedTurn(content=text.strip())
    calls: list[ParsedCall | MalformedToolCall] = []
    end = first
    for match in _BLOCK.finditer(text, first):
        calls.append(_parse_block(match.group(1)))
        end = match.end()
    rest = text[end:]
    if _OPEN in rest:
        tail = rest[rest.index(_OPEN) + len(_OPEN):]
        calls.append(MalformedToolCall(raw=tail.strip(), reason="`<tool_call>` is never closed (output cut off?)"))
    return ParsedTurn(content=text[:first].strip(), calls=tuple(calls))
