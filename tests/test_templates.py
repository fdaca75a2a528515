"""The qwen2.5 renderer matches Qwen2.5's own Jinja template, and Hermes
tool-call parsing reports malformed blocks instead of crashing."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfly_min import FunctionCall, Message, Request, ToolCall
from agentfly_min.records import TextPart
from agentfly_min.templates import MalformedToolCall, ParsedCall, parse_tool_calls
from agentfly_min.templates.hermes import MAX_CALLS, MAX_DEPTH
from agentfly_min.templates.qwen25 import render
from agentfly_min.templates.chat import prompt_ids, template_messages
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


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_render_matches_the_jinja_template(tokenizer: Any, name: str, with_tools: bool) -> None:
    messages = CONVERSATIONS[name]
    tools = (calculator.schema,) if with_tools else ()
    expected = tokenizer.apply_chat_template(
        template_messages(messages),
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


def _call(arguments: str, id: str = "c9") -> ToolCall:
    return ToolCall(id=id, function=FunctionCall(name="calculator", arguments=arguments))


# Every shape of conversation the agent loop produces or a task can bring,
# hostile arguments included.
LOOP_SHAPES: dict[str, list[Message]] = {
    **CONVERSATIONS,
    "verbatim-arguments": [
        Message(role="user", content="x"),
        Message(role="assistant", content="", tool_calls=(_call('{"flag": false, "b": 1,  "a": "é"}'),)),
        Message(role="tool", content="ok", tool_call_id="c9"),
    ],
    "malformed-arguments": [
        Message(role="user", content="x"),
        Message(role="assistant", content="", tool_calls=(_call('{"expression": '), _call("not json", "c10"))),
        Message(role="tool", content="Error: bad", tool_call_id="c9"),
        Message(role="tool", content="Error: bad", tool_call_id="c10"),
    ],
    "hostile-arguments": [
        Message(role="user", content="x"),
        Message(
            role="assistant",
            content="",
            tool_calls=(_call("[" * 1000 + "]" * 1000), _call('{"n": ' + "9" * 5000 + "}", "c10"), _call('{"s": "\\ud800"}', "c11")),
        ),
        Message(role="tool", content="Error", tool_call_id="c9"),
    ],
    "developer-and-parts": [
        Message(role="developer", content="Be brief."),
        Message(role="user", content=(TextPart(text="two "), TextPart(text="parts"))),
        Message(role="assistant", content=None, tool_calls=None),
    ],
}


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("name", list(LOOP_SHAPES))
def test_the_loop_renderer_and_the_transports_template_agree_token_for_token(tokenizer: Any, name: str, with_tools: bool) -> None:
    """The agent loop renders prompts itself; the vLLM and verl transports
    render a request without prompt_ids through the tokenizer's template.
    One conversation, one token sequence."""
    messages = LOOP_SHAPES[name]
    tools = (calculator.schema,) if with_tools else ()
    ours = tokenizer.encode(render(messages, tools), add_special_tokens=False)
    assert prompt_ids(tokenizer, Request(messages=tuple(messages), tools=tools)) == ours


def test_tool_arguments_are_kept_as_the_model_wrote_them() -> None:
    written = '{"flag": false, "b": 1,  "a": "é", "u": "\\u00e9"}'
    (call,) = parse_tool_calls(f"<tool_call>\n{{\"name\": \"f\", \"arguments\": {written}}}\n</tool_call>").calls
    assert isinstance(call, ParsedCall) and call.arguments == written  # spacing, order, escapes, booleans


def test_calls_written_while_thinking_are_not_calls() -> None:
    call = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert parse_tool_calls(f"<think>maybe {call}</think>No call.").calls == ()
    assert parse_tool_calls(f"<think>unfinished thought {call}").calls == ()
    (real,) = parse_tool_calls(f"<think>{call}</think>{call}").calls
    assert isinstance(real, ParsedCall) and real.name == "f"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"name": "f", "arguments": ' + "[" * 1000 + "]" * 1000 + "}", f"nested deeper than {MAX_DEPTH}"),
        ('{"name": "f", "arguments": "' + "[" * 1000 + '"}', f"nested deeper than {MAX_DEPTH}"),
        ('{"name": "f", "arguments": {"n": ' + "1" * 5000 + "}}", "not valid JSON"),
        ('{"name": "f", "arguments": {}} trailing', "extra text"),
    ],
)
def test_hostile_blocks_are_reported_not_raised(body: str, reason: str) -> None:
    (call,) = parse_tool_calls(f"<tool_call>{body}</tool_call>").calls
    assert isinstance(call, MalformedToolCall) and reason in call.reason


def test_calls_past_the_limit_are_one_error() -> None:
    calls = parse_tool_calls('<tool_call>{"name": "f"}</tool_call>' * (MAX_CALLS + 10)).calls
    assert len(calls) == MAX_CALLS + 1
    assert isinstance(calls[-1], MalformedToolCall) and "10 more tool calls" in calls[-1].reason


def test_many_unclosed_tags_are_one_cut_off_call() -> None:
    (call,) = parse_tool_calls("<tool_call>" * 20_000).calls
    assert isinstance(call, MalformedToolCall) and "never closed" in call.reason


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


def test_no_tool_call_is_plain_content_as_sampled() -> None:
    assert parse_tool_calls("  The answer is 4.  ").calls == ()
    assert parse_tool_calls("  The answer is 4.  ").content == "  The answer is 4.  "


@given(st.text())
def test_parsing_never_raises(text: str) -> None:
    turn = parse_tool_calls(text)
    assert all(isinstance(c, ParsedCall | MalformedToolCall) for c in turn.calls)


def _json_values() -> st.SearchStrategy[str]:
    """JSON text, well formed or not: deep nesting, huge strings and
    numbers, invalid unicode escapes, truncation."""
    leaf = st.one_of(
        st.just("1"), st.just("false"), st.just("null"), st.just('"\\ud800"'), st.just('"\\uZZZZ"'),
        st.integers(1, 6000).map(lambda n: "7" * n), st.integers(0, 50_000).map(lambda n: '"' + "a" * n + '"'),
        st.text(max_size=20).map(json.dumps),
    )  # fmt: skip
    nested = st.tuples(st.integers(0, 3 * MAX_DEPTH), leaf, st.booleans()).map(
        lambda t: ("[" * t[0]) + t[1] + ("]" * t[0] if t[2] else "")
    )
    return st.one_of(leaf, nested, nested.map(lambda v: '{"k": ' + v + "}"))


def _hostile_turns() -> st.SearchStrategy[str]:
    block = st.one_of(
        _json_values().map(lambda v: '<tool_call>{"name": "calculator", "arguments": ' + v + "}</tool_call>"),
        _json_values().map(lambda v: "<tool_call>" + v + "</tool_call>"),
        st.integers(1, 3000).map(lambda n: "<tool_call>" * n),
        st.just("<think>"), st.just("</think>"), st.just("</tool_call>"), st.text(max_size=30),
    )  # fmt: skip
    return st.lists(block, max_size=8).map("".join)


@given(_hostile_turns())
def test_structured_hostile_output_never_breaks_parsing_or_rendering(text: str) -> None:
    turn = parse_tool_calls(text)
    assert len(turn.calls) <= MAX_CALLS + 2
    calls = []
    for k, call in enumerate(turn.calls):
        if isinstance(call, ParsedCall):
            assert isinstance(json.loads(call.arguments), dict)
            calls.append(_call(call.arguments, f"c{k}"))
        else:
            calls.append(ToolCall(id=f"c{k}", function=FunctionCall(name="invalid_tool_call", arguments=call.raw)))
    # What the loop does next with them: write them back into a prompt.
    rendered = render([Message(role="user", content="q"), Message(role="assistant", content=turn.content, tool_calls=tuple(calls))])
    rendered.encode("utf-8")
