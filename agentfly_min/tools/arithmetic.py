"""Arithmetic for agents, without ``eval``."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated

from msgspec import Meta

from .tool import ToolError, tool

__all__ = ["calculator", "evaluate"]

MAX_CHARS = 500
MAX_DIGITS = 1000
_SMALLEST = math.log10(2.2250738585072014e-308)  # the smallest normal float

_Number = int | float
_BINARY: dict[type[ast.operator], Callable[[_Number, _Number], _Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[_Number], _Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _check(value: _Number) -> _Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is too large")
    if isinstance(value, int) and abs(value) >= 10**MAX_DIGITS:
        raise ToolError(f"result has more than {MAX_DIGITS} digits")
    return value


def _power(base: _Number, exponent: _Number) -> _Number:
    # Decide from the magnitude before computing: 9**9**9 would otherwise run
    # for hours, and 2**-4000 would quietly come out as 0.
    if base not in (0, 1, -1):
        magnitude = exponent * math.log10(abs(base))  # log10 of the result's size
        if magnitude > MAX_DIGITS:
            raise ToolError(f"result has more than {MAX_DIGITS} digits")
        if magnitude < _SMALLEST:
            raise ToolError(f"result is about 1e{math.floor(magnitude)}, too small to represent (below 1e-308)")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("result is not a real number")
    return _check(result)


def _eval(node: ast.AST) -> _Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        assert isinstance(node.value, (int, float))
        return _check(node.value)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        op = _BINARY.get(type(node.op))
        if op is not None:
            return _check(op(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is not None:
            return unary(_eval(node.operand))
    raise ToolError(f"unsupported syntax: {type(node).__name__}; use numbers, + - * / // % ** and parentheses")


def _format(value: _Number) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.15g}"


def evaluate(expression: str) -> str:
    """Evaluate arithmetic; raise :class:`ToolError` saying what is wrong."""
    if len(expression) > MAX_CHARS:
        raise ToolError(f"expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ToolError(f"not an arithmetic expression: {exc}") from None
    try:
        return _format(_eval(tree))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result is too large") from None
    except RecursionError:
        raise ToolError("expression is nested too deeply") from None


@tool(blocking=False)  # bounded input and results: microseconds, no thread needed
def calculator(expression: Annotated[str, Meta(min_length=1, max_length=MAX_CHARS)]) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "(3 + 4) * 2 ** 3".
    """
    return evaluate(expression)
