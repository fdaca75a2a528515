"""Parsing tool calls that a model wrote in the Hermes format.

``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number per
turn. Model output is hostile input: parsing never raises and its cost is
linear in the length of the text. A block that is not a JSON object with a
string ``name`` (and an object, or a JSON string holding one, as
``arguments``), a block nested deeper than :data:`MAX_DEPTH`, a
``<tool_call>`` left unclosed, or calls past :data:`MAX_CALLS` in one turn
become :class:`MalformedToolCall` records that say what is wrong. Text inside
``<think>…</think>`` (and after an unclosed ``<think>``) is reasoning: a
call written there is not a call.

A call's ``arguments`` is the JSON text exactly as the model wrote it
(spacing, key order, escapes), never re-serialised.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from collections.abc import Iterator

from .base import MalformedToolCall, ParsedCall, ParsedTurn

__all__ = ["MAX_CALLS", "MAX_DEPTH", "ParsedCall", "MalformedToolCall", "ParsedTurn", "parse_tool_calls", "parse_call_object", "json_depth", "too_deep"]

MAX_DEPTH = 64
"""Deepest JSON nesting accepted in a call (Python's json recursion, and
every tool after it, would fail far below what a model can write)."""
MAX_CALLS = 64
"""Most tool calls taken from one turn; the rest are reported as one error."""

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ESCAPES = re.compile(r"\\.", re.DOTALL)
_STRINGS = re.compile(r'"[^"]*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # an opening bracket +1, a closing one -1 (after the shift)
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def json_depth(text: str) -> int:
    """The deepest bracket nesting of JSON ``text`` (strings skipped), in
    linear time and without recursion; unbalanced text counts its peak."""
    return max(0, max(_depths(text), default=0))


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``text`` nests deeper than ``limit``; stops at the first
    bracket past it."""
    return any(depth > limit for depth in _depths(text))


def _depths(text: str) -> Iterator[int]:
    # Escapes first, so that an escaped quote cannot end a string; then the
    # strings; then a running sum over the brackets, all in C.
    bare = _NOT_BRACKETS.sub("", _STRINGS.sub("", _ESCAPES.sub("", text)))
    steps = map(operator.sub, bare.encode("ascii").translate(_STEP), itertools.repeat(1))
    return itertools.accumulate(steps)


def _object_members(body: str) -> dict[str, tuple[object, str]] | str:
    """The top-level members of a JSON object as (value, raw text), or why
    ``body`` is not one. ``body`` was checked for depth already."""
    if not body.startswith("{"):
        return "expected a JSON object with `name` and `arguments`"
    members: dict[str, tuple[object, str]] = {}
    at = _SPACE.match(body, 1).end()  # type: ignore[union-attr]  # matches the empty string at worst
    if body.startswith("}", at):
        end = at + 1
    else:
        while True:
            if not body.startswith('"', at):
                return f"not valid JSON (expected a key at position {at})"
            key, at = json.decoder.scanstring(body, at + 1)  # type: ignore[attr-defined]
            at = _SPACE.match(body, at).end()  # type: ignore[union-attr]
            if not body.startswith(":", at):
                return f"not valid JSON (expected ':' at position {at})"
            at = _SPACE.match(body, at + 1).end()  # type: ignore[union-attr]
            value, end = _DECODER.raw_decode(body, at)
            members[key] = (value, body[at:end])
            at = _SPACE.match(body, end).end()  # type: ignore[union-attr]
            if body.startswith(",", at):
                at = _SPACE.match(body, at + 1).end()  # type: ignore[union-attr]
                continue
            if not body.startswith("}", at):
                return f"not valid JSON (expected ',' or '}}' at position {at})"
            end = at + 1
            break
    if body[end:].strip():
        return f"not valid JSON (extra text after the object at position {end})"
    return members


def parse_call_object(raw: str, argument_keys: tuple[str, ...] = ("arguments",)) -> ParsedCall | MalformedToolCall:
    """A call written as a JSON object with a string ``name`` and its
    arguments under the first of ``argument_keys`` present: an object, or a
    JSON string holding one. The arguments are kept as written. Never raises."""
    body = raw.strip()
    if too_deep(body):
        return MalformedToolCall(raw=body, reason=f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        members = _object_members(body)
    except json.JSONDecodeError as exc:
        return MalformedToolCall(raw=body, reason=f"not valid JSON ({exc.msg} at position {exc.pos})")
    except ValueError as exc:  # e.g. an integer longer than Python converts
        return MalformedToolCall(raw=body, reason=f"not valid JSON ({exc})")
    if isinstance(members, str):
        return MalformedToolCall(raw=body, reason=members)
    name = members.get("name", (None, ""))[0]
    if not isinstance(name, str) or not name:
        return MalformedToolCall(raw=body, reason="missing a string `name`")
    key = next((k for k in argument_keys if k in members), argument_keys[0])
    arguments, arguments_text = members.get(key, ({}, "{}"))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        arguments_text = arguments.strip()
        if too_deep(arguments_text):
            return MalformedToolCall(raw=body, reason=f"JSON nested deeper than {MAX_DEPTH} levels")
        try:
            arguments = json.loads(arguments_text)
        except ValueError:
            return MalformedToolCall(raw=body, reason=f"`{key}` is a string that is not JSON")
    if not isinstance(arguments, dict):
        return MalformedToolCall(raw=body, reason=f"`{key}` must be a JSON object")
    return ParsedCall(name=name, arguments=arguments_text)


def _visible(text: str) -> list[tuple[int, int]]:
    """The spans of ``text`` outside ``<think>…</think>`` blocks."""
    spans: list[tuple[int, int]] = []
    at = 0
    while True:
        start = text.find(_THINK_OPEN, at)
        if start < 0:
            spans.append((at, len(text)))
            return spans
        spans.append((at, start))
        close = text.find(_THINK_CLOSE, start + len(_THINK_OPEN))
        if close < 0:
            return spans  # an unclosed <think>: the rest is reasoning
        at = close + len(_THINK_CLOSE)


def parse_tool_calls(text: str) -> ParsedTurn:
    """Split a model's turn into its plain content and its tool calls.

    Linear in ``len(text)``: each ``<tool_call>`` is matched with the first
    ``</tool_call>`` after it, and the first one that has none ends the
    search (it is reported as cut off)."""
    if _OPEN not in text:
        return ParsedTurn(content=text)  # an answer, as sampled: rendered back, it gives the sampled text
    calls: list[ParsedCall | MalformedToolCall] = []
    first: int | None = None
    extra = 0
    for start, stop in _visible(text):
        at = start
        while (open_at := text.find(_OPEN, at, stop)) >= 0:
            first = open_at if first is None else first
            body_at = open_at + len(_OPEN)
            close_at = text.find(_CLOSE, body_at, stop)
            if close_at < 0:
                unclosed = text[body_at:stop].strip()
                calls.append(MalformedToolCall(raw=unclosed, reason="`<tool_call>` is never closed (output cut off?)"))
                return _turn(text, first, calls, extra)
            if len(calls) < MAX_CALLS:
                calls.append(parse_call_object(text[body_at:close_at]))
            else:
                extra += 1
            at = close_at + len(_CLOSE)
    return _turn(text, first, calls, extra)


def _turn(text: str, first: int | None, calls: list[ParsedCall | MalformedToolCall], extra: int) -> ParsedTurn:
    if extra:
        calls.append(MalformedToolCall(raw="", reason=f"{extra} more tool calls past the limit of {MAX_CALLS} per turn"))
    content = text[:first] if first is not None else text
    return ParsedTurn(content=content.strip(), calls=tuple(calls))
