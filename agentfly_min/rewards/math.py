"""Rewards for math answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from ..agent.trajectory import Trajectory

__all__ = ["math_reward_string_equal", "extract_answer", "normalize_answer", "as_number", "as_rational"]

_BOX = "\\boxed{"
_BRACES = re.compile(r"[{}]")
# A number standing on its own: not glued to letters, digits or a point on
# either side (so the 3 of "1e3" or "x3" is no number), its sign only where
# a sign can be (not the dash of a range like "3-5"), thousands separators,
# a decimal part, an exponent.
_NUMBER = re.compile(
    r"(?<![\w.])(?:(?<![\d)])[-+\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
)
_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf|rm)\{([^{}]*)\}")
_NUMERIC = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d*)?(?:[eE][-+]?\d+)?")
# Characters that bind a number into an expression: the 4 of "3/4", "2^4",
# "\frac{1}{4}", "\sqrt{4}", "3-4" or "(1, 4)" is no answer on its own.
_OPERATORS = frozenset("+-\u2212*/^_{}\\()[]\u00d7\u00f7\u221a!=<>")
_BINDING = frozenset("+-\u2212*/^_{}\\()[]\u00d7\u00f7\u221a!")
_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?)\\frac(\d)(\d)|(-?\d+)\s*/\s*(-?\d+)")
_ASSIGNMENT = re.compile(r"[a-zA-Z]\s*=\s*(.+)")
_COSMETIC = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\ ", " "), ("^{\\circ}", ""), ("^\\circ", ""), ("\u00b0", ""), ("\\$", ""))
_SQRT_DIGIT = re.compile(r"\\sqrt\s*(\d)")


def _last_box(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (braces balanced),
    or None: one pass that matches every brace with a stack, so a thousand
    unclosed boxes cost what one does."""
    opened: list[int] = []  # positions of the '{' not matched yet
    closes: dict[int, int] = {}  # the '{' of a box -> its matching '}'
    boxes: set[int] = set()
    at = text.find(_BOX)
    while at >= 0:
        boxes.add(at + len(_BOX) - 1)
        at = text.find(_BOX, at + len(_BOX))
    if not boxes:
        return None
    for brace in _BRACES.finditer(text):
        j = brace.start()
        if brace.group() == "{":
            opened.append(j)
        elif opened:
            start = opened.pop()
            if start in boxes:
                closes[start] = j
    if not closes:
        return None
    last = max(closes)
    return text[last + 1 : closes[last]]


def extract_answer(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` if there is one (an
    unclosed box after it does not hide it), else the last number standing
    on its own in the text, or the expression it is part of (see
    :func:`math_reward_string_equal`), else None."""
    box = _last_box(text)
    if box is not None:
        return box
    last: re.Match[str] | None = None
    for match in _NUMBER.finditer(text):
        if any(c.isdigit() for c in match.group()):
            last = match
    if last is None:
        return None
    expression = _expression(text, last.start(), last.end())
    if expression is None:
        return last.group()
    return expression.removeprefix(_BOX)  # the opening of a box cut off is no operator


def _neighbour(text: str, at: int, step: int) -> int:
    """The index of the first non-space character from ``at`` in direction
    ``step`` (-1 or 1), or -1 / len(text) past the end."""
    while 0 <= at < len(text) and text[at].isspace():
        at += step
    return at


def _expression(text: str, start: int, end: int) -> str | None:
    """The expression the number at ``text[start:end]`` is part of, if an
    operator binds it to its neighbours (across spaces), else None. The
    span grows a word at a time over operators, so it stays linear."""
    before, after = _neighbour(text, start - 1, -1), _neighbour(text, end, 1)
    if not ((before >= 0 and text[before] in _BINDING) or (after < len(text) and text[after] in _BINDING)):
        return None
    while True:  # grow left: over the word, then over an operator and the word beyond it
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        before = _neighbour(text, start - 1, -1)
        if before < 0 or not (text[start] in _OPERATORS or text[before] in _OPERATORS):
            break
        start = before
    while True:  # grow right the same way
        while end < len(text) and not text[end].isspace():
            end += 1
        after = _neighbour(text, end, 1)
        if after >= len(text) or not (text[end - 1] in _OPERATORS or text[after] in _OPERATORS):
            break
        end = after + 1
    return text[start:end].rstrip(".,;:").strip("$") or None


def normalize_answer(answer: str) -> str:
    """The cosmetic parts of an answer removed: surrounding whitespace,
    ``$`` and ``\\(``/``\\)``, ``\\text{...}``-style wrappers (their content
    kept), ``{,}`` written for a thousands comma, a unicode minus (read as
    ``-``), a trailing ``%`` or ``\\%``, a trailing point, a leading ``+``."""
    text = answer.strip()
    for _ in range(3):  # wrappers nest rarely, but they do
        text = _WRAPPERS.sub(r"\1", text)
    text = text.replace("{,}", ",").replace("\u2212", "-").replace("\\(", "").replace("\\)", "")
    for old, new in _COSMETIC:
        text = text.replace(old, new)
    text = text.strip().strip("$").strip()
    if (assigned := _ASSIGNMENT.fullmatch(text)) is not None:
        text = assigned.group(1)
    for suffix in ("\\%", "%"):
        if text.endswith(suffix):
            text = text[: -len(suffix)].strip()
    if text.endswith(".") and text[:-1].strip():
        text = text[:-1]
    if text.startswith("+"):
        text = text[1:]
    return text.strip()


def as_number(answer: str) -> Decimal | None:
    """``answer`` (normalized) as an exact decimal number, or None if it is
    not one: ``1,000``, ``.5``, ``-0``, ``2.50`` and ``1e3`` are numbers."""
    text = normalize_answer(answer)
    if not text or not any(c.isdigit() for c in text) or _NUMERIC.fullmatch(text) is None:
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def as_rational(answer: str) -> Fraction | None:
    """``answer`` (normalized) as an exact rational if it is a number or a
    fraction of integers (``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``,
    ``-\\frac{1}{2}``), else None."""
    number = as_number(answer)
    if number is not None:
        return Fraction(number)
    match = _FRACTION.fullmatch(normalize_answer(answer))
    if match is None:
        return None
    frac_sign, frac_top, frac_bottom, short_sign, short_top, short_bottom, slash_top, slash_bottom = match.groups()
    if frac_top is not None:
        sign, top, bottom = frac_sign, frac_top, frac_bottom
    elif short_top is not None:
        sign, top, bottom = short_sign, short_top, short_bottom
    else:
        sign, top, bottom = "", slash_top, slash_bottom
    if int(bottom) == 0:
        return None
    value = Fraction(int(top), int(bottom))
    return -value if sign else value


def math_reward_string_equal(trajectory: Trajectory, task: Mapping[str, Any]) -> float:
    """1.0 when the final answer equals ``task["answer"]``, else 0.0.

    The rule, exactly:

    1. The final text is the last assistant message's text; without one the
       reward is 0.0.
    2. The answer in it is the content of the last complete ``\\boxed{...}``
       (braces balanced; an unclosed ``\\boxed{`` later on does not hide an
       earlier complete one). Without a box, it is the last number standing
       on its own: digits with optional thousands commas, decimal part and
       exponent, not glued to letters or digits (the ``3`` of ``1e3`` or
       ``x3`` is not a number; ``1e3`` is 1000), with a sign only where a sign
       can stand. If an operator binds that number to its neighbours (the
       ``4`` of ``3/4``, ``2^4``, ``\\frac{1}{4}``, ``-\\sqrt{4}``, ``3-4`` or
       ``(1, 4)``), the answer is the whole expression, never the number
       alone. No answer found scores 0.0.
    3. Both sides go through :func:`normalize_answer` (which also drops
       ``\\left``/``\\right``, degree marks, LaTeX spacing and a leading
       ``x =``). If both then read as rationals (:func:`as_rational`: a
       number, or a fraction of integers as ``3/4`` or ``\\frac{3}{4}``),
       they are compared as values: ``.5``, ``0.50``, ``1/2`` and
       ``\\dfrac{1}{2}`` are equal, ``-0`` is ``0``, ``1{,}000`` is ``1000``,
       ``42\\%`` is ``42``. Otherwise the normalized strings are compared
       exactly, spaces aside (``\\sqrt{8}`` and ``2\\sqrt{2}`` differ): the rule never says
       equal where the answers differ, and says different for some equal
       ones that need algebra (see ``docs/math-grading.md`` for how it
       compares with math-verify).

    A task without an ``answer`` field is an error (recorded on the
    trajectory as a reward error).
    """
    expected = str(task["answer"])
    final = trajectory.final_text()
    if final is None:
        return 0.0
    found = extract_answer(final)
    if found is None:
        return 0.0
    found_value, expected_value = as_rational(found), as_rational(expected)
    if found_value is not None and expected_value is not None:
        return 1.0 if found_value == expected_value else 0.0
    return 1.0 if _unspaced(found) == _unspaced(expected) else 0.0


def _unspaced(answer: str) -> str:
    """The normalized answer without spaces (insignificant in LaTeX) and with
    ``\\sqrt 2`` written ``\\sqrt{2}``."""
    return "".join(_SQRT_DIGIT.sub(r"\\sqrt{\1}", normalize_answer(answer)).split())
