"""What a chat template is to the agent loop, and the registry of them.

A :class:`Template` is a small record of plain functions: how the first
prompt becomes token ids, which ids go between a sampled turn and the next
(the end of the turn if the model did not sample it, the tool results, the
next generation prompt), and how a sampled turn's text is read (content,
reasoning, tool calls). The loop never re-renders history: a trajectory's
response is the sampled ids with these splices between them, so it stays
token-exact whatever a template would do to earlier turns.

Templates are registered by name (:mod:`.registry`); adding a family is
one module that builds its record, listed in :mod:`.families`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from ..records import Message, ToolSchema
__all__ = ["Template", "Turn", "ParsedCall", "MalformedToolCall", "ParsedTurn", "split_reasoning"]


class ParsedCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call read from a turn: ``arguments`` is the JSON text of an
    object, as the model wrote it; ``id`` is the call's id when the format
    has the model write one (Mistral's)."""

    name: str
    arguments: str
    id: str | None = None


class MalformedToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """Something that meant to be a tool call and is not one; ``reason`` is
    told to the model."""

    raw: str
    reason: str


class ParsedTurn(msgspec.Struct, frozen=True, kw_only=True):
    """A sampled turn read: its plain content, its reasoning (thinking) if
    the family has any, and its tool calls in order."""

    content: str
    calls: tuple[ParsedCall | MalformedToolCall, ...] = ()
    reasoning: str | None = None


class Turn(NamedTuple):
    """What the loop knows when it splices between turns."""

    history: Sequence[Message]
    """The conversation so far, ending with the assistant message just sampled."""
    sampled: Sequence[int]
    """The ids that turn sampled."""
    results: Sequence[Message]
    """The tool messages answering it."""
    tools: Sequence[ToolSchema]
    """The tools offered."""


class Template(msgspec.Struct, frozen=True, kw_only=True):
    """How one model family's chat format meets the agent loop.

    - ``prompt_ids(tokenizer, messages, tools)``: the first prompt, with the
      generation prompt, as token ids.
    - ``between_ids(tokenizer, turn)``: the ids that follow a sampled turn
      before the next one is sampled; exactly what the template puts there.
    - ``parse(text)``: a sampled turn's content, reasoning and tool calls;
      never raises, linear in the text.
    - ``parse_with_tools(text, tools)``: the same, for formats whose values
      are read by the tools' schemas (Qwen3-Coder's XML parameters); None:
      ``parse`` needs no schema. The agent loop prefers it.
    - ``check(tokenizer)``: raises ``ValueError`` if the tokenizer cannot
      carry this format (a missing special token).
    - ``decode(tokenizer, ids)``: a sampled turn's text as ``parse`` wants
      it, from its ids, where the format lives in special tokens that a
      transport's text leaves out (Mistral's ``[TOOL_CALLS]``, harmony's
      channels); None: the transport's text is used.
    - ``call_id(turn, index)``: the id a call gets when the model wrote
      none, for formats that constrain ids.
    - ``render(messages, tools)``: the whole conversation as the family's
      own template writes it (text), where there is one; tests use it to
      prove the splices equal a full render.
    - ``with_options(options)``: the template with the family's own chat
      template options applied (Qwen3's ``enable_thinking``, say), raising
      :class:`ConfigError` for one it does not take; None: it takes none.

    ``tool_format`` and ``reasoning`` describe the family for people (and
    ``agentfly-min templates``).
    """

    name: str
    tool_format: str
    reasoning: str
    prompt_ids: Callable[[Any, Sequence[Message], Sequence[ToolSchema]], list[int]]
    between_ids: Callable[[Any, Turn], list[int]]
    parse: Callable[[str], ParsedTurn]
    parse_with_tools: Callable[[str, Sequence[ToolSchema]], ParsedTurn] | None = None
    check: Callable[[Any], None] = lambda tokenizer: None
    render: Callable[[Sequence[Message], Sequence[ToolSchema]], str] | None = None
    decode: Callable[[Any, Sequence[int]], str] | None = None
    call_id: Callable[[int, int], str] = lambda turn, index: f"call_{turn}_{index}"
    with_options: Callable[[Mapping[str, Any]], Template] | None = None


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, rest)`` of a turn that may open with ``<think>…</think>``
    (the opening tag may have been in the prompt, as Qwen3 and DeepSeek-R1
    put it there). The answer is what follows the last ``</think>``, as
    Qwen3's template reads a turn; everything before it is reasoning, so no
    sampled text is lost. An unclosed block is all reasoning. Linear."""
    close = text.rfind(_THINK_CLOSE)
    open_at = text.find(_THINK_OPEN)
    if close < 0:
        if open_at >= 0:
            return text[open_at + len(_THINK_OPEN) :].strip("\n"), ""
        return None, text
    start = open_at + len(_THINK_OPEN) if 0 <= open_at < close else 0
    return text[start:close].strip("\n"), text[close + len(_THINK_CLOSE) :].lstrip("\n")
