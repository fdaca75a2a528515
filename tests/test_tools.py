"""The tool decorator and the calculator."""

from __future__ import annotations

import ast
import threading
from typing import Annotated

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import Meta

from agentfly_min import ConfigError, Tool, tool
from agentfly_min.tools import ToolError, calculator
from agentfly_min.tools.arithmetic import MAX_DIGITS, evaluate


@tool
def search(query: str, top_k: Annotated[int, Meta(ge=1, le=20)] = 5) -> list[str]:
    """Search the notes.

    Args:
        query: Words to look for.
        top_k: How many results to return.
    """
    return [query] * top_k


@tool(name="slow_add", timeout=2.0)
async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    await anyio.sleep(0)
    return a + b


def test_schema_from_signature_and_docstring() -> None:
    assert isinstance(search, Tool)
    function = search.schema.function
    assert function.name == "search" and function.description == "Search the notes."
    assert function.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Words to look for."},
            "top_k": {"type": "integer", "description": "How many results to return.", "minimum": 1, "maximum": 20, "default": 5},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    assert add.name == "slow_add" and add.is_async and add.timeout == 2.0


def test_no_description_is_empty() -> None:
    for t in (search, add, calculator):
        assert t.description
        for prop in t.schema.function.parameters["properties"].values():
            assert prop["description"]


@pytest.mark.anyio
async def test_call_validates_and_runs_sync_and_async_tools() -> None:
    assert await search.call('{"query": "x", "top_k": 2}') == '["x","x"]'
    assert await add.call('{"a": 2, "b": 3}') == "5"
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` <= 20 - at `\$.top_k`"):
        await search.call('{"query": "x", "top_k": 50}')
    with pytest.raises(msgspec.ValidationError, match="missing required field `query`"):
        await search.call("{}")
    with pytest.raises(msgspec.ValidationError, match="unknown field `q`"):
        await search.call('{"q": "x"}')
    with pytest.raises(msgspec.DecodeError):
        await search.call('{"query": ')


@pytest.mark.anyio
async def test_a_sync_tool_runs_in_a_worker_thread_unless_declared_non_blocking() -> None:
    def where() -> int:
        """Which thread runs it."""
        return threading.get_ident()

    here = str(threading.get_ident())
    assert await tool(where).call("{}") != here  # may block: off the event loop
    assert await tool(blocking=False)(where).call("{}") == here  # cheap: inline, no thread hop
    assert not calculator.blocking


def test_undescribed_tools_are_refused_when_decorated() -> None:
    def bare(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="needs a docstring"):
        tool(bare)

    def half(x: int, y: int) -> int:
        """Add.

        Args:
            x: One.
        """
        return x + y

    with pytest.raises(ConfigError, match="'y' has no description"):
        tool(half)


@pytest.mark.parametrize(
    ("expression", "result"),
    [("2+2", "4"), ("7/2", "3.5"), ("4/2", "2"), ("(3 + 4) * 2 ** 3", "56"), ("-3**2", "-9"), ("2**-1", "0.5"),
     ("17 // 5", "3"), ("17 % 5", "2"), ("1.5e3", "1500"), ("2**10", "1024")],
)
def test_calculator_arithmetic(expression: str, result: str) -> None:
    assert evaluate(expression) == result


@pytest.mark.parametrize(
    ("expression", "says"),
    [("1/0", "division by zero"), ("5 % 0", "division by zero"), ("0**-1", "division by zero"),
     ("9**9**9", f"more than {MAX_DIGITS} digits"), ("10**999*10", f"more than {MAX_DIGITS} digits"),
     ("1e308*10", "too large"), ("(-8)**(1/3)", "not a real number"), ("__import__('os')", "unsupported syntax: Call"),
     ("(1).real", "unsupported syntax: Attribute"), ("x + 1", "unsupported syntax: Name"), ("'a' * 3", "unsupported syntax"),
     ("True + 1", "unsupported syntax"), ("lambda: 1", "unsupported syntax: Lambda"), ("1 +", "not an arithmetic expression"),
     ("(" * 300 + "1" + ")" * 300, "longer than"), ("1" * 501, "longer than")],
)
def test_calculator_refuses_with_a_message(expression: str, says: str) -> None:
    with pytest.raises(ToolError, match=says.replace("(", r"\(").replace("*", r"\*")):
        evaluate(expression)


_ATOMS = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr))
_OPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**"])


@st.composite
def _expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 4 or draw(st.booleans()):
        return draw(_ATOMS)
    left = draw(_expressions(depth + 1))
    right = draw(_expressions(depth + 1))
    return f"({left} {draw(_OPS)} {right})"


@settings(max_examples=400, deadline=2000)
@given(_expressions())
def test_fuzz_arithmetic_returns_a_number_or_a_tool_error(expression: str) -> None:
    try:
        result = evaluate(expression)
    except ToolError:
        return
    float(result)  # a real number, written as one


@settings(max_examples=400, deadline=2000)
@given(st.text(max_size=200))
def test_fuzz_any_text_never_crashes_hangs_or_runs_code(text: str) -> None:
    try:
        result = evaluate(text)
    except ToolError:
        return
    # Only arithmetic got through: the text parsed to numbers and operators alone.
    tree = ast.parse(text.strip(), mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)
    assert all(isinstance(node, allowed) for node in ast.walk(tree))
    float(result)


def test_tool_refuses_what_it_cannot_describe_or_call() -> None:
    import functools

    from agentfly_min import ConfigError, tool

    def add(a: int, b: int) -> int:
        """Add.

        Args:
            a: One.
            b: Two.
        """
        return a + b

    with pytest.raises(ConfigError, match="takes a function or method, not a partial"):
        tool(functools.partial(add, 1))

    def positional(a: int, /) -> int:
        """Echo.

        Args:
            a: A number.
        """
        return a

    with pytest.raises(ConfigError, match="'a' is positional-only"):
        tool(positional)

    def stale(a: int) -> int:
        """Echo.

        Args:
            a: A number.
            b: Removed long ago.
        """
        return a

    with pytest.raises(ConfigError, match="Args describe b, which the function does not take"):
        tool(stale)


@pytest.mark.parametrize(
    ("expression", "says"),
    [("2**-4000", "about 1e-1205, too small"), ("10**-1000", "about 1e-1000, too small"), ("9**9**9", "more than 1000 digits")],
)
def test_calculator_says_what_is_wrong_with_extreme_results(expression: str, says: str) -> None:
    from agentfly_min.tools import ToolError
    from agentfly_min.tools.arithmetic import evaluate

    with pytest.raises(ToolError, match=says):
        evaluate(expression)
    assert evaluate("10**-300") == "1e-300"  # small, but representable
