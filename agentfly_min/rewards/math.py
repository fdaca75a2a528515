"""Rewards for math answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from ..agent.trajectory import Trajectory

__all__ = ["math_reward_string_equal", "extract_answer", "normalize_answer", "as_number"]

_BOX = "\\boxed{"
# A number standing on its own: not glued to letters, digits or a point on
# either side (so the 3 of "1e3" or "x3" is no number), its sign only where
# a sign can be (not the dash of a range like "3-5"), thousands separators,
# a decimal part, an exponent.
_NUMBER = re.compile(
    r"(?<![\w.])(?:(?<![\d)])[-+\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
)
_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf|rm)\{([^{}]*)\}")
_NUMERIC = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _boxes(text: str) -> list[str]:
    """The contents of every complete ``\\boxed{...}`` (braces balanced), in order."""
    found: list[str] = []
    at = text.find(_BOX)
    while at >= 0:
        depth, start = 1, at + len(_BOX)
        for j in range(start, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:j])
                    break
        at = text.find(_BOX, at + len(_BOX))
    return found


def extract_answer(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` if there is one (an
    unclosed box after it does not hide it), else the last number standing
    on its own in the text (see :func:`math_reward_string_equal`), else None."""
    boxes = _boxes(text)
    if boxes:
        return boxes[-1]
    numbers = [m.group() for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group())]
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """The cosmetic parts of an answer removed: surrounding whitespace,
    ``$`` and ``\\(``/``\\)``, ``\\text{...}``-style wrappers (their content
    kept), ``{,}`` written for a thousands comma, a unicode minus (read as
    ``-``), a trailing ``%`` or ``\\%``, a trailing point, a leading ``+``."""
    text = answer.strip()
    for _ in range(3):  # wrappers nest rarely, but they do
        text = _WRAPPERS.sub(r"\1", text)
    text = text.replace("{,}", ",").replace("\u2212", "-").replace("\\(", "").replace("\\)", "")
    text = text.strip().strip("$").strip()
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
       can stand (the dash in ``3-5`` is a range, not a minus). No answer
       found scores 0.0.
    3. Both sides go through :func:`normalize_answer`. If both then read as
       numbers (:func:`as_number`), they are compared as numbers: ``.5``,
       ``0.5`` and ``0.50`` are equal, ``-0`` is ``0``, ``1{,}000`` is
       ``1000``, ``42\\%`` is ``42``. Otherwise the normalized strings are
       compared exactly (``1/2`` and ``0.5`` differ).

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
    found_number, expected_number = as_number(found), as_number(expected)
    if found_number is not None and expected_number is not None:
        return 1.0 if found_number == expected_number else 0.0
    return 1.0 if normalize_answer(found) == normalize_answer(expected) else 0.0
