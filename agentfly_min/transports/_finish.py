"""Reading a server's finish reason."""

from __future__ import annotations

import logging

from ..records import FinishReason

__all__ = ["finish_reason"]

_log = logging.getLogger("agentfly_min.transports")

_KNOWN: dict[str | None, FinishReason] = {
    None: "stop",
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "completed": "stop",
    "length": "length",
    "max_tokens": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "abort": "abort",
    "aborted": "abort",
    "cancelled": "abort",
}


def finish_reason(reason: str | None) -> FinishReason:
    """Our finish reason for a server's: the ones in use across OpenAI,
    Anthropic-style and vLLM servers by name; an unknown one by its shape
    (anything about length, tokens or a limit is ``"length"``) and logged,
    so that a new server word is seen rather than silently read as
    ``"stop"``."""
    known = _KNOWN.get(reason)
    if known is not None:
        return known
    assert reason is not None
    lowered = reason.lower()
    guess: FinishReason
    if any(word in lowered for word in ("length", "token", "limit", "max")):
        guess = "length"
    elif "tool" in lowered or "function" in lowered:
        guess = "tool_calls"
    elif "abort" in lowered or "cancel" in lowered:
        guess = "abort"
    elif "filter" in lowered:
        guess = "content_filter"
    else:
        guess = "stop"
    _log.warning("unknown finish reason %r from the server, read as %r", reason, guess)
    return guess
