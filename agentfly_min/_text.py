"""Turning arbitrary error text into one readable line."""

from __future__ import annotations

import re

__all__ = ["one_line", "a_or_an"]

# CSI sequences (colours, cursor moves) and the other two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def one_line(text: str, limit: int = 500) -> str:
    """``text`` without terminal escape codes, its lines joined with `` | ``
    when it has a few, else its first and last line (a traceback's summary
    is its last line), cut to ``limit`` characters."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    if len(lines) > 3:
        lines = [lines[0], "...", lines[-1]]
    joined = " | ".join(lines)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def a_or_an(word: str) -> str:
    """``word`` with its indefinite article: "an AsyncVLLMConfig", "a ClientConfig"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
