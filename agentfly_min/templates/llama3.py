"""The Llama 3.1–3.3 chat format, with JSON tool calls.

As Meta's templates write custom (JSON) tools (``templates/upstream/llama3.3.jinja``
and ``llama3.2.jinja``, verbatim): a system header with ``Environment:
ipython`` and the dates, the tool definitions (JSON indented by 4) and the
calling instructions at the start of the first user message, one call as
the whole assistant turn (``{"name": ..., "parameters": {...}}``), its
result, JSON-encoded, in an ``ipython`` turn; system and message texts
trimmed. A turn ends with ``<|eot_id|>``, or ``<|eom_id|>`` when the model
expects a tool result (both end generation). The templates take one call
per turn and refuse two; so does :func:`render`, and :func:`parse` reads a
second call as a malformed one. Llama 3.2's template writes the day it is
rendered on as today's date; this one writes Meta's fixed default unless
the ``date_string`` option says otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..errors import ConfigError
from ..records import Message, ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn
from .hermes import parse_call_object, too_deep
from .qwen25 import arguments_value, encode, single_token

__all__ = ["render", "between", "parse", "TEMPLATE", "DATE", "llama3_template"]

BOS, EOT, EOM, PYTHON_TAG = "<|begin_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"
END_OF_TEXT = "<|end_of_text|>"
DATE = "26 Jul 2024"
_CUTOFF = "December 2023"
# Upstream's text, with its missing space: "...its value}.Do not use variables."
_TOOL_PROMPT = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
    "dictionary of argument name and its value}.Do not use variables.\n\n"
)
_ONE_CALL = "This model only supports single tool-calls at once!"


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _dumps(value: object, indent: int | None = None) -> str:
    # The `tojson` filter of transformers' chat-template sandbox.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _call_json(name: str, arguments: str) -> str:
    return '{"name": "' + name + '", "parameters": ' + _dumps(arguments_value(arguments)) + "}"


def _result(message: Message) -> str:
    # The template JSON-encodes a tool result (a string is iterable in Jinja).
    return _header("ipython") + _dumps(message.text) + EOT


def render(
    messages: Sequence[Message], tools: Sequence[ToolSchema] = (), *, add_generation_prompt: bool = True, date_string: str = DATE
) -> str:
    """A conversation as Meta's Llama 3.1/3.3 template writes it (custom
    tools in the first user message). Two calls in one turn raise
    ``ValueError``, as the template does."""
    rest = list(messages)
    system = ""
    if rest and rest[0].role in ("system", "developer"):
        system = rest.pop(0).text.strip()
    text = BOS + _header("system")
    if tools:
        text += "Environment: ipython\n"
    text += f"Cutting Knowledge Date: {_CUTOFF}\nToday Date: {date_string}\n\n{system}{EOT}"
    if tools:
        if not rest:
            raise ValueError("Cannot put tools in the first user message when there's no first user message!")
        first = rest.pop(0)
        definitions = "".join(_dumps(msgspec.to_builtins(tool), indent=4) + "\n\n" for tool in tools)
        text += _header("user") + _TOOL_PROMPT + definitions + first.text.strip() + EOT
    for message in rest:
        if message.role == "tool":
            text += _result(message)
        elif message.calls:
            if len(message.calls) != 1:
                raise ValueError(_ONE_CALL)
            call = message.calls[0]
            text += _header("assistant") + _call_json(call.function.name, call.function.arguments) + EOT
        else:
            role = "system" if message.role == "developer" else message.role
            text += _header(role) + message.text.strip() + EOT
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
    text = ("" if ended else EOT) + "".join(_result(m) for m in turn.results) + _header("assistant")
    return encode(tokenizer, text)


_SPACE = re.compile(r"\s*")


def parse(text: str) -> ParsedTurn:
    """A turn that is a JSON call, with or without ``<|python_tag|>``, is a
    call; anything else is content. A second call (the format has none; a
    model may still write ``{...}; {...}``) is a malformed call, since the
    template cannot write a turn with two. Never raises; linear."""
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
        return ParsedTurn(content=text)
    if too_deep(body):
        return ParsedTurn(content="", calls=(MalformedToolCall(raw=body, reason="JSON nested deeper than the limit"),))
    try:
        _, end = json.JSONDecoder().raw_decode(body, 0)
    except ValueError:  # JSONDecodeError, or a number too long to read: a plain answer that starts with "{"
        return ParsedTurn(content=text)
    calls: list[ParsedCall | MalformedToolCall] = [parse_call_object(body[:end], ("parameters", "arguments"))]
    after = _SPACE.match(body, end).end()  # type: ignore[union-attr]  # matches the empty string at worst
    if after < len(body):
        reason = (
            "Llama 3 calls one function per turn; call the next one after this one's result"
            if body[after] == ";"
            else "text after a call; a call is the whole turn"
        )
        calls.append(MalformedToolCall(raw=body[after:], reason=reason))
    return ParsedTurn(content="", calls=tuple(calls))


def _check(tokenizer: Any) -> None:
    for token in (BOS, EOT, EOM, END_OF_TEXT, "<|start_header_id|>", "<|end_header_id|>"):
        single_token(tokenizer, token, "Llama 3")


def llama3_template(date_string: str = DATE) -> Template:
    """The Llama 3 template, writing ``date_string`` as today's date."""

    def prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
        return encode(tokenizer, render(messages, tools, date_string=date_string))

    def full(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> str:
        return render(messages, tools, date_string=date_string)

    return Template(
        name="llama3",
        tool_format="llama3 JSON ({name, parameters}; one call per turn)",
        reasoning="none",
        prompt_ids=prompt_ids,
        between_ids=between,
        parse=parse,
        check=_check,
        render=full,
        with_options=_with_options,
    )


def _with_options(options: Mapping[str, Any]) -> Template:
    date = options.get("date_string", DATE)
    if set(options) - {"date_string"} or not isinstance(date, str):
        raise ConfigError(
            "template options",
            f"llama3 takes date_string (text, e.g. {DATE!r}); got {dict(options)!r}. "
            "template hf passes any option to the model's own chat template",
        )
    return llama3_template(date)


TEMPLATE = llama3_template()
