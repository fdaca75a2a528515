"""Chat templates and tool-call parsing."""

from typing import Literal, TypeAlias

from .hermes import MalformedToolCall, ParsedCall, ParsedTurn, parse_tool_calls

__all__ = ["TemplateName", "MalformedToolCall", "ParsedCall", "ParsedTurn", "parse_tool_calls"]

TemplateName: TypeAlias = Literal["qwen2.5"]
