"""Records round-trip the OpenAI wire shape and refuse bad values."""

from __future__ import annotations

import msgspec
import pytest

from agentfly_min import (
    Completion,
    ConfigError,
    FunctionCall,
    FunctionSchema,
    Message,
    Output,
    Request,
    ToolCall,
    ToolSchema,
    Usage,
)


def test_messages_round_trip_the_openai_wire_shape() -> None:
    wire: list[dict[str, object]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"e": "2+2"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "calc", "content": "4"},
    ]
    messages = msgspec.json.decode(msgspec.json.encode(wire), type=list[Message])
    assert messages[2].tool_calls == (ToolCall(id="call_1", function=FunctionCall(name="calc", arguments='{"e": "2+2"}')),)
    again: list[dict[str, object]] = msgspec.json.decode(msgspec.json.encode(messages))
    assert again[1] == wire[1] and again[3] == wire[3]
    assert again[2]["tool_calls"] == wire[2]["tool_calls"]


def test_tool_schema_encodes_like_openai_tools() -> None:
    schema = ToolSchema(function=FunctionSchema(name="calc", description="math", parameters={"type": "object"}))
    assert msgspec.to_builtins(schema) == {
        "type": "function",
        "function": {"name": "calc", "description": "math", "parameters": {"type": "object"}},
    }
    with pytest.raises(ConfigError, match="FunctionSchema.name"):
        FunctionSchema(name="has space")


def test_request_validation() -> None:
    with pytest.raises(ConfigError, match="Request.messages"):
        Request()
    with pytest.raises(ConfigError, match="Request.top_p"):
        Request(prompt_ids=(1,), top_p=0.0)
    with pytest.raises(ConfigError, match="Request.max_new_tokens"):
        Request(prompt_ids=(1,), max_new_tokens=0)
    with pytest.raises(ConfigError, match="Message.role"):
        Message(role="robot")  # type: ignore[arg-type]


def test_completion_round_trips_msgpack() -> None:
    completion = Completion(
        outputs=(Output(text="hi", finish_reason="length", token_ids=(1, 2), logprobs=(-0.1, -0.2)),),
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        attempts=2,
    )
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(completion), type=Completion) == completion
    assert completion.usage.total_tokens == 5


def test_the_fast_checks_take_only_what_convert_would_take_unchanged() -> None:
    """Records skip ``msgspec.convert`` for values whose type proves them
    valid; everything else still goes through it (and is refused or
    converted exactly as before)."""
    hi = Message(role="user", content="hi")
    assert Request(messages=(hi,)).messages == (hi,)
    assert Request(messages=[hi]).messages == (hi,)  # type: ignore[arg-type]  # a list still becomes a tuple
    assert Request(messages=({"role": "user", "content": "hi"},)).messages == (hi,)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Request.messages"):
        Request(messages=(hi, "not a message"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Message.role"):
        Message(role="robot", content="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Message.content"):
        Message(role="user", content=7)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Output.finish_reason"):
        Output(text="", finish_reason=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Request.n"):
        Request(messages=(hi,), n=True)  # a bool is not an int here
    with pytest.raises(ConfigError, match="Request.temperature"):
        Request(messages=(hi,), temperature=3.0)  # constrained fields always go through convert
    with pytest.raises(ConfigError, match="Completion.outputs"):
        Completion(outputs=())
    warm = Request(messages=(hi,), temperature=1)
    assert warm.temperature == 1.0 and type(warm.temperature) is float
