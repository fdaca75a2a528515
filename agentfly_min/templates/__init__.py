"""Chat templates: how each model family's conversations become tokens and
how its sampled turns are read (see :mod:`agentfly_min.templates.base`)."""

from typing import TypeAlias

from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn, split_reasoning
from .registry import get_template, register_template, template_names
from .hermes import parse_tool_calls

__all__ = [
    "TemplateName",
    "Template",
    "Turn",
    "ParsedTurn",
    "ParsedCall",
    "MalformedToolCall",
    "register_template",
    "get_template",
    "template_names",
    "parse_tool_calls",
    "split_reasoning",
]

TemplateName: TypeAlias = str
"""The name a template is registered under (``"qwen2.5"``, ``"qwen3"``, ...)."""
