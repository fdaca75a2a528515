"""Qwen3-Coder's chat format: ChatML, tools listed and called in XML.

As Qwen3-Coder's template writes it (``templates/upstream/qwen3-coder.jinja``,
vLLM's copy): the tools in the system turn as ``<tools><function><name>…``
with their parameters and types, an instruction to call them as::

    <tool_call>
    <function=calculator>
    <parameter=expression>
    2 + 2
    </parameter>
    </function>
    </tool_call>

tool results as a user turn of ``<tool_response>`` blocks, no reasoning.

A parameter's text is its value: with the tool's schema at hand
(:func:`parse_with_tools`, what the agent loop uses), it is read as the
schema's type says, as vLLM's ``qwen3_coder`` parser reads it (a
``"string"`` parameter stays text, so ``391`` is the string ``"391"`` where
the schema asks for one); without a schema it stays text. One newline at
each end is the format's and is trimmed. Parsing never raises and is
linear in the text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..records import Message, ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn
from .hermes import MAX_CALLS, MAX_DEPTH, too_deep
from .qwen25 import IM_END, IM_START, _tojson, arguments_value, encode, single_token

__all__ = ["parse", "parse_with_tools", "render", "between", "TEMPLATE"]

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION, _FUNCTION_END = "<function=", "</function>"
_PARAMETER, _PARAMETER_END = "<parameter=", "</parameter>"
DEFAULT_SYSTEM = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks."
_INSTRUCTIONS = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified "
    "format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in natural "
    "language BEFORE the function call, but NOT after\n- If there is no function call available, answer the question "
    "like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>"
)


# --- rendering, as the template does -------------------------------------------


def _text(value: object) -> str:
    """Jinja's ``string`` filter: Python's ``str`` (JSON's true is written
    ``True``, as the template writes the Python value it becomes)."""
    return value if isinstance(value, str) else str(value)


def _structured(value: object) -> bool:
    # Jinja's `is mapping or (is sequence and is not string)`.
    return isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str))


def _extra_keys(fields: object, handled: tuple[str, ...]) -> str:
    if not isinstance(fields, Mapping):
        return ""
    out = ""
    for key, value in fields.items():
        if key not in handled:
            out += f"\n<{key}>" + (_tojson(value) if _structured(value) else _text(value)) + f"</{key}>"
    return out


def _tool(schema: ToolSchema) -> str:
    function: dict[str, Any] = msgspec.to_builtins(schema.function)
    text = f"\n<function>\n<name>{function['name']}</name>"
    if "description" in function:
        text += f"\n<description>{function['description'].strip()}</description>"
    text += "\n<parameters>"
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    if isinstance(properties, Mapping):
        for name, fields in properties.items():
            text += f"\n<parameter>\n<name>{name}</name>"
            if isinstance(fields, Mapping) and "type" in fields:
                text += f"\n<type>{_text(fields['type'])}</type>"
            if isinstance(fields, Mapping) and "description" in fields:
                text += f"\n<description>{_text(fields['description']).strip()}</description>"
            text += _extra_keys(fields, ("name", "type", "description")) + "\n</parameter>"
    text += _extra_keys(parameters, ("type", "properties")) + "\n</parameters>"
    return text + _extra_keys(function, ("type", "name", "description", "parameters")) + "\n</function>"


def _system(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> str:
    system = messages[0].text if messages and messages[0].role in ("system", "developer") else None
    if system is None and not tools:
        return ""
    text = f"{IM_START}system\n" + (system if system is not None else DEFAULT_SYSTEM)
    if tools:
        text += "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
        text += "".join(_tool(schema) for schema in tools) + "\n</tools>" + _INSTRUCTIONS
    return text + f"{IM_END}\n"


def _call(name: str, arguments: str) -> str:
    values = arguments_value(arguments)
    if not isinstance(values, Mapping):
        raise ValueError(f"the template renders a call's arguments as an object; {name} has {arguments[:80]!r}")
    body = "".join(
        f"<parameter={key}>\n" + (_tojson(value) if _structured(value) else _text(value)) + "\n</parameter>\n"
        for key, value in values.items()
    )
    return f"\n<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def _results(results: Sequence[Message], *, opened: bool) -> str:
    """Consecutive tool messages; ``opened``: the previous message was not a
    tool message, so they open a user turn. The turn closes after the last."""
    body = "".join(f"<tool_response>\n{m.text}\n</tool_response>\n" for m in results)
    return (f"{IM_START}user\n" if opened else "") + body + f"{IM_END}\n"


def render(messages: Sequence[Message], tools: Sequence[ToolSchema] = (), *, add_generation_prompt: bool = True) -> str:
    """A conversation as Qwen3-Coder's template writes it."""
    text = _system(messages, tools)
    rest = list(messages[1:] if messages and messages[0].role in ("system", "developer") else messages)
    at = 0
    while at < len(rest):
        message = rest[at]
        if message.role == "tool":
            end = at
            while end < len(rest) and rest[end].role == "tool":
                end += 1
            text += _results(rest[at:end], opened=at > 0)
            at = end
            continue
        if message.role == "assistant" and message.calls:
            text += f"{IM_START}assistant"
            if message.text.strip():
                text += "\n" + message.text.strip() + "\n"
            text += "".join(_call(call.function.name, call.function.arguments) for call in message.calls) + f"{IM_END}\n"
        else:
            role = "system" if message.role == "developer" else message.role
            text += f"{IM_START}{role}\n{message.text}{IM_END}\n"
        at += 1
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def between(tokenizer: Any, turn: Turn) -> list[int]:
    """The end of the sampled turn (if the model did not sample it), the
    tool results as one user turn, the next generation prompt."""
    ended = bool(turn.sampled) and turn.sampled[-1] == single_token(tokenizer, IM_END, "Qwen3-Coder")
    text = ("" if ended else IM_END) + "\n" + _results(turn.results, opened=True) + f"{IM_START}assistant\n"
    return encode(tokenizer, text)


# --- parsing ------------------------------------------------------------------------

_ALIASES = {
    "str": "string", "text": "string", "varchar": "string", "char": "string", "enum": "string",
    "int": "integer", "int32": "integer", "int64": "integer", "uint": "integer", "uint32": "integer",
    "uint64": "integer", "long": "integer", "short": "integer", "unsigned": "integer",
    "float": "number", "float32": "number", "float64": "number", "double": "number",
    "bool": "boolean", "dict": "object", "arr": "array", "list": "array", "sequence": "array",
}  # fmt: skip
_ORDER = ("null", "integer", "number", "boolean", "object", "array", "string")


def _types(schema: object) -> set[str]:
    """The JSON types a parameter's schema allows (its ``type``, its enum's
    values, its ``anyOf``/``oneOf``/``allOf``); ``{"string"}`` when it says
    none, as vLLM reads a schema."""
    if not isinstance(schema, Mapping):
        return {"string"}
    found: set[str] = set()
    kind = schema.get("type")
    for name in [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []:
        if isinstance(name, str):
            found.add(_ALIASES.get(name.strip().lower(), name.strip().lower()))
    enum = schema.get("enum")
    for value in enum if isinstance(enum, list) else []:
        found.add(
            "null" if value is None else "boolean" if isinstance(value, bool) else "integer" if isinstance(value, int)
            else "number" if isinstance(value, float) else "array" if isinstance(value, list)
            else "object" if isinstance(value, dict) else "string"
        )  # fmt: skip
    for key in ("anyOf", "oneOf", "allOf"):
        choices = schema.get(key)
        for choice in choices if isinstance(choices, list) else []:
            found |= _types(choice)
    return found or {"string"}


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _typed(text: str, schema: object) -> object:
    """``text`` as the first type of the schema it reads as (null, integer,
    number, boolean, object, array, string, in that order), else as JSON,
    else as text."""
    allowed = _types(schema)
    for kind in _ORDER:
        if kind not in allowed:
            continue
        if kind == "string":
            return text
        if kind == "null" and text.lower() == "null":
            return None
        if kind == "integer":
            try:
                return int(text)
            except ValueError:
                continue
        if kind == "number":
            try:
                number = float(text)
            except ValueError:
                continue
            if math.isfinite(number):
                return int(number) if number == int(number) else number
        if kind == "boolean":
            lowered = text.lower().strip()
            if lowered in ("true", "1", "false", "0"):
                return lowered in ("true", "1")
        if kind in ("object", "array") and not too_deep(text):
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if _finite(value):
                return value
    if too_deep(text):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if _finite(value) else text


def _trim(text: str) -> str:
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    return text


def _properties(tools: Sequence[ToolSchema], name: str) -> Mapping[str, Any] | None:
    for schema in tools:
        if schema.function.name == name:
            properties = schema.function.parameters.get("properties")
            return properties if isinstance(properties, Mapping) else None
    return None


def _one_call(block: str, tools: Sequence[ToolSchema] | None) -> ParsedCall | MalformedToolCall:
    start = block.find(_FUNCTION)
    if start < 0:
        return MalformedToolCall(raw=block, reason="expected <function=name> inside <tool_call>")
    name_end = block.find(">", start)
    if name_end < 0:
        return MalformedToolCall(raw=block, reason="<function= is never closed with '>'")
    name = block[start + len(_FUNCTION) : name_end].strip()
    if not name:
        return MalformedToolCall(raw=block, reason="the function has no name")
    properties = _properties(tools, name) if tools is not None else None
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
        key = body[open_at + len(_PARAMETER) : key_end].strip()
        raw = _trim(body[key_end + 1 : end])
        arguments[key] = _typed(raw, properties[key]) if properties is not None and key in properties else raw
        at = end + (len(_PARAMETER_END) if end == close else 0)
    try:
        text = json.dumps(arguments, ensure_ascii=False)
    except ValueError:  # a value json.loads read but cannot write back (never in practice)
        return MalformedToolCall(raw=block, reason="unreadable parameters")
    return ParsedCall(name=name, arguments=text)


def _parse(text: str, tools: Sequence[ToolSchema] | None) -> ParsedTurn:
    first = text.find(_OPEN)
    if first < 0:
        return ParsedTurn(content=text)
    calls: list[ParsedCall | MalformedToolCall] = []
    at = first
    while (open_at := text.find(_OPEN, at)) >= 0 and len(calls) <= MAX_CALLS:
        close = text.find(_CLOSE, open_at + len(_OPEN))
        if close < 0:
            calls.append(MalformedToolCall(raw=text[open_at + len(_OPEN) :].strip(), reason="`<tool_call>` is never closed (output cut off?)"))
            break
        block = text[open_at + len(_OPEN) : close]
        calls.append(_one_call(block, tools) if not too_deep(block, MAX_DEPTH * 4) else MalformedToolCall(raw=block, reason="nested too deeply"))
        at = close + len(_CLOSE)
    return ParsedTurn(content=text[:first].strip(), calls=tuple(calls[: MAX_CALLS + 1]))


def parse(text: str) -> ParsedTurn:
    """Qwen3-Coder's calls, their parameters as text (no schema at hand);
    content is the text before the first call."""
    return _parse(text, None)


def parse_with_tools(text: str, tools: Sequence[ToolSchema]) -> ParsedTurn:
    """Qwen3-Coder's calls, each parameter read as its tool's schema types it."""
    return _parse(text, tools)


def _prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
    return encode(tokenizer, render(messages, tools))


def _check(tokenizer: Any) -> None:
    for token in (IM_END, _OPEN, _CLOSE):
        single_token(tokenizer, token, "Qwen3-Coder")


TEMPLATE = Template(
    name="qwen3-coder",
    tool_format="qwen3-coder XML (<tools><function>…; <function=...><parameter=...>)",
    reasoning="none",
    prompt_ids=_prompt_ids,
    between_ids=between,
    parse=parse,
    parse_with_tools=parse_with_tools,
    check=_check,
    render=render,
)
