"""Qwen3-Coder's XML tool calls, and its template.

A call is written as::

    <tool_call>
    <function=calculator>
    <parameter=expression>
    2 + 2
    </parameter>
    </function>
    </tool_call>

Each parameter's text becomes its value: a JSON number, boolean, null,
array or object when it reads as one, else the string itself (one newline
at each end trimmed, as the format writes them). The rest of the format is
Qwen3's ChatML, so the template is Qwen3's (thinking off) with this parser.
Parsing never raises and is linear in the text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..records import Message, ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn
from .hermes import MAX_CALLS, MAX_DEPTH, too_deep
from .qwen3 import NO_THINKING

__all__ = ["parse", "TEMPLATE"]

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION, _FUNCTION_END = "<function=", "</function>"
_PARAMETER, _PARAMETER_END = "<parameter=", "</parameter>"


def _value(text: str) -> object:
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    stripped = text.strip()
    if stripped and stripped[0] in '-0123456789tfn[{"' and not too_deep(stripped):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return text


def _call(block: str) -> ParsedCall | MalformedToolCall:
    start = block.find(_FUNCTION)
    if start < 0:
        return MalformedToolCall(raw=block, reason="expected <function=name> inside <tool_call>")
    name_end = block.find(">", start)
    if name_end < 0:
        return MalformedToolCall(raw=block, reason="<function= is never closed with '>'")
    name = block[start + len(_FUNCTION) : name_end].strip()
    if not name:
        return MalformedToolCall(raw=block, reason="the function has no name")
    body_end = block.find(_FUNCTION_END, name_end)
    body = block[name_end + 1 : body_end if body_end >= 0 else len(block)]
    arguments: dict[str, object] = {}
    at = 0
    close = body.find(_PARAMETER_END)  # searched forward only, so the whole scan stays linear
    while (open_at := body.find(_PARAMETER, at)) >= 0:
        key_end = body.find(">", open_at)
        if key_end < 0:
            return MalformedToolCall(raw=block, reason="<parameter= is never closed with '>'")
        if 0 <= close < key_end:
            close = body.find(_PARAMETER_END, key_end)
        following = body.find(_PARAMETER, key_end)
        # A parameter ends at its closing tag, or (some models omit it) at the next parameter.
        end = close if close >= 0 and (following < 0 or close < following) else (following if following >= 0 else len(body))
        arguments[body[open_at + len(_PARAMETER) : key_end].strip()] = _value(body[key_end + 1 : end])
        at = end + (len(_PARAMETER_END) if end == close else 0)
    try:
        text = json.dumps(arguments, ensure_ascii=False)
    except ValueError:  # a number json.loads read but cannot write back (never in practice)
        return MalformedToolCall(raw=block, reason="unreadable parameters")
    return ParsedCall(name=name, arguments=text)


def parse(text: str) -> ParsedTurn:
    """Qwen3-Coder's calls; content is the text before the first one."""
    first = text.find(_OPEN)
    if first < 0:
        return ParsedTurn(content=text.strip())
    calls: list[ParsedCall | MalformedToolCall] = []
    at = first
    while (open_at := text.find(_OPEN, at)) >= 0 and len(calls) <= MAX_CALLS:
        close = text.find(_CLOSE, open_at + len(_OPEN))
        if close < 0:
            calls.append(MalformedToolCall(raw=text[open_at + len(_OPEN) :].strip(), reason="`<tool_call>` is never closed (output cut off?)"))
            break
        block = text[open_at + len(_OPEN) : close]
        calls.append(_call(block) if not too_deep(block, MAX_DEPTH * 4) else MalformedToolCall(raw=block, reason="nested too deeply"))
        at = close + len(_CLOSE)
    return ParsedTurn(content=text[:first].strip(), calls=tuple(calls[: MAX_CALLS + 1]))


def _prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
    return NO_THINKING.prompt_ids(tokenizer, messages, tools)


def _between(tokenizer: Any, turn: Turn) -> list[int]:
    return NO_THINKING.between_ids(tokenizer, turn)


TEMPLATE = Template(
    name="qwen3-coder",
    tool_format="qwen3-coder XML (<function=...><parameter=...>)",
    reasoning="none",
    prompt_ids=_prompt_ids,
    between_ids=_between,
    parse=parse,
    check=NO_THINKING.check,
)
