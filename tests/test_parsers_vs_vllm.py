"""Our parsers against vLLM's, on one corpus of outputs in each format.

vLLM's tool-call and reasoning parsers (``vllm.tool_parsers``,
``vllm.reasoning``) are the second oracle: code this project did not write,
that serves these formats in production. Each case is read by both; where
they disagree the case is in :data:`DISAGREEMENTS` with the reason, and that
list is docs/templates.md's table ("Parsers against vLLM's"). A new disagreement,
or an old one that went away, fails the test.

Compared: the calls (name and the arguments' JSON value; we keep the bytes
the model wrote, vLLM re-serialises them, so text is not compared) and
whether the turn is a call or an answer.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import msgspec

from agentfly_min import ToolSchema, tool
from agentfly_min.templates import ParsedCall, get_template
from agentfly_min.tools import calculator

from .conftest import CACHE


@tool
def lookup(city: str, days: int = 1, metric: bool = True) -> str:
    """Look up the weather.

    Args:
        city: The city.
        days: How many days.
        metric: Metric units.
    """
    return city


TOOLS: tuple[ToolSchema, ...] = (calculator.schema, lookup.schema)

CASES: dict[str, dict[str, str]] = {
    "hermes": {
        "answer": "The answer is 4.",
        "one-call": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>',
        "content-then-call": 'Let me add.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>',
        "two-calls": (
            '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "lookup", "arguments": {"city": "Zürich", "days": 2}}\n</tool_call>'
        ),
        "compact-json": '<tool_call>{"name":"lookup","arguments":{"city":"東京","metric":false}}</tool_call>',
        "arguments-as-string": '<tool_call>\n{"name": "calculator", "arguments": "{\\"expression\\": \\"2+2\\"}"}\n</tool_call>',
        "broken-json": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"\n</tool_call>',
        "unclosed": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}',
        "no-name": '<tool_call>\n{"arguments": {"expression": "2+2"}}\n</tool_call>',
    },
    "llama3_json": {
        "answer": "The answer is 4.",
        "one-call": '{"name": "calculator", "parameters": {"expression": "2+2"}}',
        "python-tag": '<|python_tag|>{"name": "calculator", "parameters": {"expression": "2+2"}}',
        "arguments-key": '{"name": "calculator", "arguments": {"expression": "2+2"}}',
        "two-calls": '{"name": "calculator", "parameters": {"expression": "1+1"}}; {"name": "lookup", "parameters": {"city": "Oslo"}}',
        "brace-answer": "{not json, just braces}",
    },
    "qwen3_coder": {
        "answer": "The answer is 4.",
        "one-call": "<tool_call>\n<function=calculator>\n<parameter=expression>\n391\n</parameter>\n</function>\n</tool_call>",
        "typed": (
            "<tool_call>\n<function=lookup>\n<parameter=city>\nZürich\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
            "<parameter=metric>\nfalse\n</parameter>\n</function>\n</tool_call>"
        ),
        "content-then-call": "Let me.\n<tool_call>\n<function=calculator>\n<parameter=expression>\n2+2\n</parameter>\n</function>\n</tool_call>",
        "no-closing-parameter": "<tool_call>\n<function=lookup>\n<parameter=city>\nOslo\n<parameter=days>\n2\n</function>\n</tool_call>",
    },
}
REASONING: dict[str, str] = {
    "closed": "<think>\nadd them\n</think>\n\nIt is 4.",
    "opened-in-the-prompt": "add them\n</think>\n\nIt is 4.",
    "two-closes": "a</think>b</think>\n\nIt is 4.",
    "unclosed": "<think>\nstill thinking",
    "none": "It is 4.",
}

DISAGREEMENTS: dict[tuple[str, str], str] = {
    ("hermes", "arguments-as-string"): (
        "arguments written as a JSON string: vLLM passes them on still encoded (a string, which a tool taking an "
        "object refuses); ours reads the object inside"
    ),
    ("hermes", "unclosed"): (
        "a <tool_call> cut off before </tool_call>: vLLM runs it; ours reports it to the model as cut off "
        "(running half an output is a guess)"
    ),
    ("llama3_json", "two-calls"): (
        "`{...}; {...}`: vLLM runs both; ours runs the first and reports the second as malformed, since Meta's "
        "template writes one call per turn and cannot render two"
    ),
    ("qwen3_coder", "no-closing-parameter"): (
        "a parameter without </parameter>: vLLM drops it; ours ends it at the next <parameter= (models omit the tag)"
    ),
    ("qwen3 reasoning", "none"): (
        "a turn without think tags: vLLM's qwen3 parser reads it all as reasoning (the prompt may have opened it); "
        "ours as the answer, as Qwen3's template renders such a turn"
    ),
    ("qwen3 reasoning", "two-closes"): (
        "two </think>: vLLM ends the reasoning at the first and drops the second; ours ends it at the last, as "
        "Qwen3's template reads the answer, so no sampled text is lost"
    ),
}


@cache
def tokenizer_for(family: str) -> Any:
    from transformers import AutoTokenizer

    from agentfly_min.testing import tiny_model

    return AutoTokenizer.from_pretrained(str(tiny_model(CACHE, family=family)))  # type: ignore[arg-type]


OURS = {"hermes": ("qwen2.5", "qwen2.5"), "llama3_json": ("llama3", "llama3"), "qwen3_coder": ("qwen3-coder", "qwen3-coder")}


def _request() -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": ""}], tools=[msgspec.to_builtins(t) for t in TOOLS], seed=None
    )


def _value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def ours(fmt: str, text: str) -> tuple[bool, list[tuple[str, Any]]]:
    """(whether any call parsed, the calls that did: name and value)."""
    template = get_template(OURS[fmt][0])
    turn = template.parse_with_tools(text, TOOLS) if template.parse_with_tools is not None else template.parse(text)
    calls = [(c.name, _value(c.arguments)) for c in turn.calls if isinstance(c, ParsedCall)]
    return bool(calls), calls


def vllms(fmt: str, text: str) -> tuple[bool, list[tuple[str, Any]]]:
    from vllm.tool_parsers import ToolParserManager

    parser = ToolParserManager.get_tool_parser(fmt)(tokenizer_for(OURS[fmt][1]))
    info = parser.extract_tool_calls(text, _request())
    calls = [(c.function.name, _value(c.function.arguments or "{}")) for c in info.tool_calls] if info.tools_called else []
    return bool(calls), calls


def test_our_parsers_agree_with_vllms_but_where_the_readme_says() -> None:
    found: dict[tuple[str, str], tuple[Any, Any]] = {}
    for fmt, cases in CASES.items():
        for name, text in cases.items():
            a, b = ours(fmt, text), vllms(fmt, text)
            if a != b:
                found[(fmt, name)] = (a, b)
    assert set(found) | reasoning_disagreements() == set(DISAGREEMENTS), {k: v for k, v in found.items() if k not in DISAGREEMENTS}


def test_the_docs_list_every_disagreement() -> None:
    from .conftest import ROOT

    page = (ROOT / "docs" / "templates.md").read_text()
    for (fmt, case), reason in DISAGREEMENTS.items():
        assert f"| {fmt} | {case} | {reason} |" in page, (fmt, case)


def reasoning_disagreements() -> set[tuple[str, str]]:
    from vllm.reasoning import ReasoningParserManager

    parser = ReasoningParserManager.get_reasoning_parser("qwen3")(tokenizer_for("qwen3"))
    found = set()
    for case, text in REASONING.items():
        theirs_reasoning, theirs_content = parser.extract_reasoning(text, _request())
        turn = get_template("qwen3").parse(text)
        mine = ((turn.reasoning or "").strip() or None, turn.content.strip())
        theirs = ((theirs_reasoning or "").strip() or None, (theirs_content or "").strip())
        if mine != theirs:
            found.add(("qwen3 reasoning", case))
    return found
