"""Rewards for math answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..agent.trajectory import Trajectory

__all__ = ["math_reward_string_equal", "extract_answer", "normalize_answer"]

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: no usable box


def extract_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced) if there is
    one, else the last number in the text, else None."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """Light normalisation applied to both sides before comparing:
    surrounding whitespace and ``$`` removed, thousands separators
    (``1,234,567``) removed, and for decimal numbers, trailing zeros after
    the point and then a bare point removed (``2.50`` -> ``2.5``,
    ``3.0`` -> ``3``). Nothing else: ``1/2`` and ``0.5`` stay different."""
    text = answer.strip().strip("$").strip()
    text = _THOUSANDS.sub("", text)
    if re.fullmatch(r"-?\d*\.\d+", text):
        text = text.rstrip("0").rstrip(".")
        if text in ("", "-"):
            text = "0"
    return text


def math_reward_string_equal(trajectory: Trajectory, task: Mapping[str, Any]) -> float:
    """1.0 when the final answer equals ``task["answer"]`` as a string after
    :func:`normalize_answer`, else 0.0.

    The final answer is taken from the last assistant message's text by
    :func:`extract_answer`: the last ``\\boxed{...}`` if present, else the last
    number. No final text, or no answer found in it, scores 0.0. A task
    without an ``answer`` field is an error (recorded on the trajectory).
    """
    expected = normalize_answer(str(task["answer"]))
    final = trajectory.final_text()
    if final is None:
        return 0.0
    found = extract_answer(final)
    if found is None:
        return 0.0
    return 1.0 if normalize_answer(found) == expected else 0.0
