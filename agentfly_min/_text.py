"""Turning arbitrary error text into one readable line."""

from __future__ import annotations

import re

__all__ = ["one_line", "a_or_an", "scrub", "scrub_all"]

# CSI sequences (colours, cursor moves) and the other two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD. Python strings
    may hold them (``os.fsdecode`` of a file name that is not UTF-8, a
    subprocess's output read with ``surrogateescape``), but neither UTF-8,
    JSON nor a Rust tokenizer can carry them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def scrub_all(value: object) -> object:
    """Builtins (``msgspec.to_builtins``'s output) with every string scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [scrub_all(item) for item in value]
    if isinstance(value, dict):
        return {scrub_all(key): scrub_all(item) for key, item in value.items()}
    return value


def one_line(text: str, limit: int = 500) -> str:
    """``text`` without terminal escape codes, its lines joined with `` | ``
    when it has a few, else its first and last line (a traceback's summary
    is its last line), cut to ``limit`` characters."""
    lines = [line.strip() for line in _ANSI.sub("", scrub(text)).splitlines() if line.strip()]
    if len(lines) > 3:
        lines = [lines[0], "...", lines[-1]]
    joined = " | ".join(lines)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def a_or_an(word: str) -> str:
    """``word`` with its indefinite article: "an AsyncVLLMConfig", "a ClientConfig"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
