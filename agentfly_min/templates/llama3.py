"""The Llama 3.1–3.3 chat format, with JSON tool calls.

As Llama 3.1's template writes custom (JSON) tools: a system header with
``Environment: ipython`` and the dates, the tool definitions and the
calling instructions at the start of the first user message, a call as the
whole assistant turn (``{"name": ..., "parameters": {...}}``, optionally
after ``<|python_tag|>``), its result in an ``ipython`` turn. A turn ends
with ``<|eot_id|>``, or ``<|eom_id|>`` when the model expects a tool result
(both end generation). :data:`CHAT_TEMPLATE` is this format as a Jinja
template, written for the tiny test models from the format's public
description; the tests hold it and :func:`render` together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from ..records import Message, ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn
from .hermes import MAX_CALLS, parse_call_object, too_deep
from .qwen25 import arguments_value, encode, single_token

__all__ = ["render", "between", "parse", "CHAT_TEMPLATE", "TEMPLATE", "DATE"]

BOS, EOT, EOM, PYTHON_TAG = "<|begin_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"
END_OF_TEXT = "<|end_of_text|>"
DATE = "26 Jul 2024"
_CUTOFF = "December 2023"
_TOOL_PROMPT = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
    "dictionary of argument name and its value}. Do not use variables.\n\n"
)


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _call_json(name: str, arguments: str) -> str:
    return '{"name": "' + name + '", "parameters": ' + _dumps(arguments_value(arguments)) + "}"


def render(messages: Sequence[Message], tools: Sequence[ToolSchema] = (), *, add_generation_prompt: bool = True) -> str:
    """A conversation as Llama 3.1's template writes it (custom tools in
    the first user message)."""
    rest = list(messages)
    system = ""
    if rest and rest[0].role in ("system", "developer"):
        system = rest.pop(0).text
    text = BOS + _header("system")
    if tools:
        text += "Environment: ipython\n"
    text += f"Cutting Knowledge Date: {_CUTOFF}\nToday Date: {DATE}\n\n{system}{EOT}"
    first_user = True
    for message in rest:
        if message.role == "user" and first_user and tools:
            first_user = False
            definitions = "".join(_dumps(msgspec.to_builtins(tool)) + "\n\n" for tool in tools)
            text += _header("user") + _TOOL_PROMPT + definitions + message.text + EOT
        elif message.role == "assistant" and message.calls:
            calls = "; ".join(_call_json(c.function.name, c.function.arguments) for c in message.calls)
            text += _header("assistant") + calls + EOT
        elif message.role == "tool":
            text += _header("ipython") + message.text + EOT
        else:
            if message.role == "user":
                first_user = False
            role = "system" if message.role == "developer" else message.role
            text += _header(role) + message.text + EOT
    if add_generation_prompt:
        text += _header("assistant")
    return text


def between(tokenizer: Any, turn: Turn) -> list[int]:
    """The end of the sampled turn (if the model stopped without one of
    ``<|eot_id|>``, ``<|eom_id|>``, ``<|end_of_text|>``, all of which Llama
    3.1 stops on), one ``ipython`` turn per tool result, the next assistant
    header."""
    ends = {single_token(tokenizer, token, "Llama 3") for token in (EOT, EOM, END_OF_TEXT)}
    ended = bool(turn.sampled) and turn.sampled[-1] in ends
    text = ("" if ended else EOT) + "".join(_header("ipython") + m.text + EOT for m in turn.results) + _header("assistant")
    return encode(tokenizer, text)


_SPACE = re.compile(r"\s*")


def parse(text: str) -> ParsedTurn:
    """A turn that is a JSON call (or several, separated by ``;``), with or
    without ``<|python_tag|>``, is calls; anything else is content. Never
    raises; linear."""
    body = text.strip()
    tagged = body.startswith(PYTHON_TAG)
    if tagged:
        body = body[len(PYTHON_TAG) :].strip()
    for marker in (EOT, EOM, END_OF_TEXT):
        if body.endswith(marker):
            body = body[: -len(marker)].rstrip()
    if not body.startswith("{"):
        if tagged:  # it announced code or a call and wrote neither
            return ParsedTurn(content="", calls=(MalformedToolCall(raw=body, reason="expected a JSON call after <|python_tag|>"),))
        return ParsedTurn(content=text.strip())
    if too_deep(body):
        return ParsedTurn(content="", calls=(MalformedToolCall(raw=body, reason="JSON nested deeper than the limit"),))
    calls: list[ParsedCall | MalformedToolCall] = []
    decoder = json.JSONDecoder()
    at = 0
    while at < len(body) and len(calls) <= MAX_CALLS:
        try:
            value, end = decoder.raw_decode(body, at)
        except ValueError as exc:  # JSONDecodeError, or a number too long to read
            if not calls:  # a plain answer that starts with "{"
                return ParsedTurn(content=text.strip())
            calls.append(MalformedToolCall(raw=body[at:], reason=f"not valid JSON ({exc})"))
            break
        calls.append(parse_call_object(body[at:end], ("parameters", "arguments")))
        at = _SPACE.match(body, end).end()  # type: ignore[union-attr]  # matches the empty string at worst
        if at == len(body):
            break
        if body[at] != ";":
            calls.append(MalformedToolCall(raw=body[at:], reason="text after a call; separate calls with ';'"))
            break
        at = _SPACE.match(body, at + 1).end()  # type: ignore[union-attr]
    return ParsedTurn(content="", calls=tuple(calls[: MAX_CALLS + 1]))


def _check(tokenizer: Any) -> None:
    for token in (BOS, EOT, EOM, END_OF_TEXT, "<|start_header_id|>", "<|end_header_id|>"):
        single_token(tokenizer, token, "Llama 3")


def _prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
    return encode(tokenizer, render(messages, tools))


TEMPLATE = Template(
    name="llama3",
    tool_format="llama3 JSON ({name, parameters}; ';' between calls)",
    reasoning="none",
    prompt_ids=_prompt_ids,
    between_ids=between,
    parse=parse,
    check=_check,
    render=render,
)

CHAT_TEMPLATE = """{{- '<|begin_of_text|>' }}
{%- if messages and messages[0].role in ['system', 'developer'] %}
    {%- set system = messages[0].content %}{%- set rest = messages[1:] %}
{%- else %}
    {%- set system = '' %}{%- set rest = messages %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{%- if tools %}{{- 'Environment: ipython\\n' }}{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}
{%- set ns = namespace(first_user=true) %}
{%- for message in rest %}
    {%- if message.role == 'user' and ns.first_user and tools %}
        {%- set ns.first_user = false %}
        {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' }}
        {{- 'Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\\n\\n' }}
        {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\\n\\n' }}
        {%- for tool in tools %}{{- (tool | tojson) + '\\n\\n' }}{%- endfor %}
        {{- message.content + '<|eot_id|>' }}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- for call in message.tool_calls %}
            {%- if not loop.first %}{{- '; ' }}{%- endif %}
            {%- set fn = call.function if call.function is defined else call %}
            {{- '{"name": "' + fn.name + '", "parameters": ' + (fn.arguments | tojson) + '}' }}
        {%- endfor %}
        {{- '<|eot_id|>' }}
    {%- elif message.role == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
    {%- else %}
        {%- if message.role == 'user' %}{%- set ns.first_user = false %}{%- endif %}
        {{- '<|start_header_id|>' + ('system' if message.role == 'developer' else message.role) + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""
"""Llama 3.1's chat format with custom JSON tools, as a Jinja template."""
