"""What a streamed episode reports as it runs (see :func:`stream_agent`)."""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from ..records import Message, ToolCall
from .trajectory import Trajectory

__all__ = ["TextDelta", "ReasoningDelta", "ToolCallEvent", "ToolResultEvent", "TurnEnd", "EpisodeDone", "Event"]


class TextDelta(msgspec.Struct, frozen=True, kw_only=True, tag="text"):
    """A piece of the model's text in turn ``turn`` (1-based), as sampled."""

    turn: int
    text: str


class ReasoningDelta(msgspec.Struct, frozen=True, kw_only=True, tag="reasoning"):
    """A piece of the model's reasoning, where the server separates it."""

    turn: int
    text: str


class ToolCallEvent(msgspec.Struct, frozen=True, kw_only=True, tag="tool_call"):
    """A tool call read from turn ``turn``, before it runs."""

    turn: int
    call: ToolCall


class ToolResultEvent(msgspec.Struct, frozen=True, kw_only=True, tag="tool_result"):
    """A tool's answer (or its error message), as the model will see it."""

    turn: int
    message: Message
    failed: bool


class TurnEnd(msgspec.Struct, frozen=True, kw_only=True, tag="turn_end"):
    """Turn ``turn`` is over: its assistant message as read."""

    turn: int
    message: Message


class EpisodeDone(msgspec.Struct, frozen=True, kw_only=True, tag="episode_end"):
    """The episode is over; its trajectory (reward included)."""

    trajectory: Trajectory


Event: TypeAlias = TextDelta | ReasoningDelta | ToolCallEvent | ToolResultEvent | TurnEnd | EpisodeDone
