"""The qwen2.5 renderer matches Qwen2.5's own Jinja template, and Hermes
tool-call parsing reports malformed blocks instead of crashing."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfly_min import FunctionCall, Message, ToolCall
from agentfly_min.templates import MalformedToolCall, ParsedCall, parse_tool_calls
from agentfly_min.templates.qwen25 import render
from agentfly_min.tools import calculator

CALL = ToolCall(id="c1", function=FunctionCall(name="calculator", arguments='{"expression": "2+2"}'))
CONVERSATIONS: dict[str, list[Message]] = {
    "plain": [Message(role="user", content="hi")],
    "system": [Message(role="system", content="Be brief."), Message(role="user", content="hi")],
    "answered": [Message(role="user", content="hi"), Message(role="assistant", content="hello")],
    "tool-turn": [
        Message(role="user", content="2+2?"),
        Message(role="assistant", content="Let me compute.", tool_calls=(CALL,)),
        Message(role="tool", content="4", tool_call_id="c1", name="calculator"),
    ],
    "two-results": [
        Message(role="system", content="Use tools."),
        Message(role="user", content="both"),
        Message(role="assistant", content="", tool_calls=(CALL, CALL)),
        Message(role="tool", content="4", tool_call_id="c1"),
        Message(role="tool", content="4", tool_call_id="c1"),
        Message(role="assistant", content="Both are 4."),
        Message(role="user", content="thanks"),
    ],
}


def hf_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.tool_calls:
            item["tool_calls"] = [
                {"type": "function", "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                for c in m.tool_calls
            ]
        out.append(item)
    return out


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_render_matches_the_jinja_template(tokenizer: Any, name: str, with_tools: bool) -> None:
    messages = CONVERSATIONS[name]
    tools = (calculator.schema,) if with_tools else ()
    expected = tokenizer.apply_chat_template(
        hf_messages(messages),
        tools=[msgspec.to_builtins(t) for t in tools] or None,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert render(messages, tools) == expected


def test_render_without_generation_prompt() -> None:
    assert not render(CONVERSATIONS["answered"], add_generation_prompt=False).endswith("<|im_start|>assistant\n")


def test_parse_several_calls_and_content() -> None:
    text = (
        "I will compute.\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"1+1\"}}\n</tool_call>\n"
        "<tool_call>{\"name\": \"search\", \"arguments\": \"{\\\"query\\\": \\\"x\\\"}\"}</tool_call>"
    )
    turn = parse_tool_calls(text)
    assert turn.content == "I will compute."
    assert turn.calls == (
        ParsedCall(name="calculator", arguments='{"expression": "1+1"}'),
        ParsedCall(name="search", arguments='{"query": "x"}'),
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", "expected a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "missing a string `name`"),
        ('<tool_call>{"name": "f", "arguments": 3}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "f", "arguments": "nope"}</tool_call>', "string that is not JSON"),
        ('<tool_call>{"name": "f", "argu', "never closed"),
    ],
)
def test_malformed_blocks_are_reported(text: str, reason: str) -> None:
    (call,) = parse_tool_calls(text).calls
    assert isinstance(call, MalformedToolCall) and reason in call.reason


def test_no_tool_call_is_plain_content() -> None:
    assert parse_tool_calls("  The answer is 4.  ").calls == ()
    assert parse_tool_calls("  The answer is 4.  ").content == "The answer is 4."


@given(st.text())
def test_parsing_never_raises(text: str) -> None:
    turn = parse_tool_calls(text)
    assert all(isinstance(c, ParsedCall | MalformedToolCall) for c in turn.calls)
