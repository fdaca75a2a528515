"""Reading a sampled turn: its content, reasoning and tool calls, each call
with an id of its own."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import FunctionCall, Output, ToolCall, ToolSchema
from ..templates import MalformedToolCall, ParsedCall, ParsedTurn, Template

__all__ = ["read_calls", "distinct_ids"]


def read_calls(
    output: Output, turn: int, template: Template, text: str, tools: Sequence[ToolSchema]
) -> tuple[tuple[ToolCall, ...], list[str | None], ParsedTurn]:
    """The turn's tool calls, an error per call (None if it parsed) and the
    turn as the template reads it from ``text`` (with the ``tools``' schemas
    where the format needs them). Every call gets an id of its own: a server
    may send none, or the same one twice."""
    if output.tool_calls:  # the server parsed them already
        calls = distinct_ids(output.tool_calls, turn, template)
        return calls, [None] * len(calls), ParsedTurn(content=output.text, reasoning=output.reasoning)
    parsed = template.parse_with_tools(text, tools) if template.parse_with_tools is not None else template.parse(text)
    found: list[ToolCall] = []
    errors: list[str | None] = []
    for k, call in enumerate(parsed.calls):
        if isinstance(call, ParsedCall):
            found.append(ToolCall(id=call.id or "", function=FunctionCall(name=call.name, arguments=call.arguments)))
            errors.append(None)
        else:
            assert isinstance(call, MalformedToolCall)
            found.append(ToolCall(id="", function=FunctionCall(name="invalid_tool_call", arguments=call.raw)))
            errors.append(f"Error: malformed tool call: {call.reason}.")
    return distinct_ids(found, turn, template), errors, parsed


def distinct_ids(calls: Sequence[ToolCall], turn: int, template: Template) -> tuple[ToolCall, ...]:
    seen: set[str] = set()
    out: list[ToolCall] = []
    for k, call in enumerate(calls):
        if not call.id or call.id in seen:
            call = ToolCall(id=template.call_id(turn, k), function=call.function)
        seen.add(call.id)
        out.append(call)
    return tuple(out)
