"""The Qwen2.5 chat format: rendering conversations and tool schemas.

:func:`render` produces exactly what Qwen2.5's own Jinja chat template
(:data:`CHAT_TEMPLATE`, as shipped with the Qwen2.5 instruct models) produces
through ``tokenizer.apply_chat_template``; the tests hold the two together.
It is plain Python so that the agent loop can also render the *pieces* it
splices between turns (:func:`render_tool_results`) without re-rendering,
and so re-tokenising the whole conversation is never needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from ..records import Message, ToolCall, ToolSchema
from .base import ParsedTurn, Template, Turn
from .hermes import parse_tool_calls, too_deep

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM",
    "IM_START",
    "IM_END",
    "GENERATION_PROMPT",
    "render",
    "render_tool_results",
    "tool_call_json",
    "arguments_value",
    "TEMPLATE",
    "between",
    "encode",
    "single_token",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
GENERATION_PROMPT = f"{IM_START}assistant\n"
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


_SYSTEM = ("system", "developer")  # OpenAI's newer name for a system message


def _tojson(value: object) -> str:
    # What the `tojson` filter of transformers' chat-template sandbox writes.
    return json.dumps(value, ensure_ascii=False)


def arguments_value(arguments: str) -> object:
    """A past call's arguments as a chat template gets them (as vLLM's server
    passes them): the parsed value when the text is JSON that is safe to
    handle (nesting within :data:`MAX_DEPTH`, numbers Python can
    read, text that encodes as UTF-8), else the raw text. Never raises."""
    if too_deep(arguments):
        return arguments
    try:
        value = json.loads(arguments)
        _tojson(value).encode("utf-8")  # a lone surrogate escape ("\\ud800") cannot be written out
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeEncodeError are ValueErrors
        return arguments
    return value


def tool_call_json(call: ToolCall) -> str:
    """The body of one ``<tool_call>`` block: the arguments as
    :func:`arguments_value` gives them, written with the template's
    ``tojson``."""
    return '{"name": "' + call.function.name + '", "arguments": ' + _tojson(arguments_value(call.function.arguments)) + "}"


def _system(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> str:
    first = messages[0] if messages else None
    system = first.text if first is not None and first.role in _SYSTEM else None
    if tools:
        text = f"{IM_START}system\n{system if system is not None else DEFAULT_SYSTEM}{_TOOLS_HEADER}"
        for tool in tools:
            text += "\n" + _tojson(msgspec.to_builtins(tool))
        return text + _TOOLS_FOOTER + f"{IM_END}\n"
    return f"{IM_START}system\n{system if system is not None else DEFAULT_SYSTEM}{IM_END}\n"


def render_tool_results(results: Sequence[Message]) -> str:
    """One user turn holding consecutive ``tool`` messages, as the template
    writes it (including the closing ``<|im_end|>\\n``)."""
    body = "".join(f"\n<tool_response>\n{m.text}\n</tool_response>" for m in results)
    return f"{IM_START}user{body}{IM_END}\n"


def _assistant(message: Message) -> str:
    if not message.calls:
        return f"{IM_START}assistant\n{message.text}{IM_END}\n"
    text = f"{IM_START}assistant"
    if message.text:
        text += "\n" + message.text
    for call in message.calls:
        text += "\n<tool_call>\n" + tool_call_json(call) + "\n</tool_call>"
    return text + f"{IM_END}\n"


def render(
    messages: Sequence[Message], tools: Sequence[ToolSchema] = (), *, add_generation_prompt: bool = True
) -> str:
    """Render a conversation (and the tools offered) to Qwen2.5 prompt text."""
    parts = [_system(messages, tools)]
    pending_tools: list[Message] = []
    for index, message in enumerate(messages):
        if message.role == "tool":
            pending_tools.append(message)
            continue
        if pending_tools:
            parts.append(render_tool_results(pending_tools))
            pending_tools = []
        if message.role in _SYSTEM and index == 0:
            continue  # already in the system block
        if message.role == "assistant":
            parts.append(_assistant(message))
        else:
            role = "system" if message.role == "developer" else message.role
            parts.append(f"{IM_START}{role}\n{message.text}{IM_END}\n")
    if pending_tools:
        parts.append(render_tool_results(pending_tools))
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
"""Qwen2.5-Instruct's chat template (tool calls included), for tokenizers
built offline (:func:`agentfly_min.testing.tiny_model`)."""


def encode(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def single_token(tokenizer: Any, text: str, family: str) -> int:
    """The id of ``text``, which the family needs as one token."""
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer does not have {text} as one token; it is not a {family} tokenizer")
    return ids[0]


def _prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
    return encode(tokenizer, render(messages, tools))


def between(tokenizer: Any, turn: Turn, generation_prompt: str = GENERATION_PROMPT) -> list[int]:
    """The end of the assistant turn (if the model did not sample it), the
    tool results as the template writes them, the next generation prompt."""
    ended = bool(turn.sampled) and turn.sampled[-1] == single_token(tokenizer, IM_END, "ChatML")
    return encode(tokenizer, ("" if ended else IM_END) + "\n" + render_tool_results(turn.results) + generation_prompt)


def _check(tokenizer: Any) -> None:
    single_token(tokenizer, IM_END, "Qwen2.5")


def _parse(text: str) -> ParsedTurn:
    return parse_tool_calls(text)


TEMPLATE = Template(
    name="qwen2.5",
    tool_format="hermes (<tool_call> JSON)",
    reasoning="none",
    prompt_ids=_prompt_ids,
    between_ids=between,
    parse=_parse,
    check=_check,
    render=render,
)
