"""The token-exact record of an episode: the ids the engine sampled, with
the template's splices between turns. The agent loop and the gateway both
grow one, so their trajectories agree id for id."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol

import msgspec

from ..records import Message, Output, ToolSchema
from ..templates import Template, Turn
from ..templates.chat import IMAGES_NOT_YET

__all__ = ["Tokenizer", "TokenRecord", "cut_message", "finite_logprobs", "OFF_LOOP_CHARS", "LOGPROB_FLOOR"]

_log = logging.getLogger("agentfly_min.agent")


class Tokenizer(Protocol):
    """What the loop needs of a tokenizer (a ``transformers`` tokenizer fits)."""

    def encode(self, text: str, /, *, add_special_tokens: bool) -> list[int]: ...


class TokenRecord:
    """The token-exact record of an episode, grown turn by turn: the ids the
    engine sampled, with the template's splices between turns.

    ``logprobs`` and ``versions`` stay aligned with ``ids`` while every
    sampled turn brings them; the first turn without them turns them to None
    for good (a partial record would mislead a trainer)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: Template,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema],
        max_prompt_tokens: int | None,
    ) -> None:
        self._tokenizer = tokenizer
        self._template = template
        if any(message.images for message in messages):
            raise ValueError(IMAGES_NOT_YET)
        template.check(tokenizer)
        ids = template.prompt_ids(tokenizer, messages, tools)
        self.dropped = 0
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            self.dropped = len(ids) - max_prompt_tokens
            ids = ids[self.dropped :]
            _log.warning("prompt of %d tokens cut to its last %d (max_prompt_tokens)", len(ids) + self.dropped, len(ids))
        self.prompt_ids = ids
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.sources: list[int] = []
        self.logprobs: list[float] | None = []
        self.versions: list[int] | None = []
        self._last: tuple[int, ...] = ()

    def context(self) -> tuple[int, ...]:
        return (*self.prompt_ids, *self.ids)

    def sampled(self, output: Output, message_index: int) -> None:
        ids = output.token_ids or ()
        self._last = tuple(ids)
        self.ids.extend(ids)
        self.mask.extend([1] * len(ids))
        self.sources.extend([message_index] * len(ids))
        if self.logprobs is not None:
            logprobs = finite_logprobs(output.logprobs)
            if logprobs is not None and len(logprobs) == len(ids):
                self.logprobs.extend(logprobs)
            else:
                self.logprobs = None
        if self.versions is not None:
            if output.weight_versions is not None and len(output.weight_versions) == len(ids):
                self.versions.extend(output.weight_versions)
            else:
                self.versions = None

    def observation(
        self, history: Sequence[Message], results: Sequence[Message], tools: Sequence[ToolSchema], room: int | None
    ) -> bool:
        """Splice in what the template puts after the last sampled turn: its
        end (if the model did not sample it), the tool results, the next
        generation prompt. At most ``room`` tokens go in; returns False when
        the splice had to be cut there (the budget is spent)."""
        ids, fits = self.splice(history, results, tools, room)
        self.add_observation(ids, len(history))
        return fits

    def add_observation(self, ids: Sequence[int], source: int) -> None:
        """Append spliced (not sampled) ids, from message ``source``."""
        self.ids.extend(ids)
        self.mask.extend([0] * len(ids))
        self.sources.extend([source] * len(ids))  # the first tool result of the round
        if self.logprobs is not None:
            self.logprobs.extend([0.0] * len(ids))
        if self.versions is not None:
            self.versions.extend([-1] * len(ids))

    def splice(
        self, history: Sequence[Message], results: Sequence[Message], tools: Sequence[ToolSchema], room: int | None
    ) -> tuple[list[int], bool]:
        """The splice's ids, at most ``room`` of them, and whether it fit.

        Tool results are cut before they are tokenised: 4 MB of output took
        13 s to tokenise on the event loop for a budget of 100 tokens. Each
        result is cut to ``limit`` characters; when the splice then still
        overruns the room, and cutting at twice the limit gives the same
        first ``room`` ids, those are the ids the whole text would give (the
        cut only changes tokens near it, past the room). Otherwise the limit
        grows fourfold, up to the whole text."""

        def render(limit: int | None) -> list[int]:
            cut = results if limit is None else [cut_message(message, limit) for message in results]
            return self._template.between_ids(self._tokenizer, Turn(history=history, sampled=self._last, results=cut, tools=tools))

        if room is not None:
            room = max(room, 0)
            longest = max((len(message.text) for message in results), default=0)
            limit = 4 * room + 256
            while limit < longest:
                short = render(limit)
                if len(short) > room and short[:room] == render(2 * limit)[:room]:
                    return short[:room], False
                limit *= 4
        ids = render(None)
        if room is None or len(ids) <= room:
            return ids, True
        return ids[:room], False


def cut_message(message: Message, limit: int) -> Message:
    if isinstance(message.content, str) and len(message.content) > limit:
        return msgspec.structs.replace(message, content=message.content[:limit])
    return message


OFF_LOOP_CHARS = 256 * 1024
"""Tool output beyond this many characters is tokenised on a worker thread
(about 0.5 s of a fast tokenizer's time here)."""

LOGPROB_FLOOR = -9999.0
"""What a logprob of ``-inf`` is recorded as: vLLM's OpenAI server's floor.
JSON has no infinity (it would be written as ``null`` and the line would no
longer read as a trajectory)."""


def finite_logprobs(logprobs: Sequence[float] | None) -> Sequence[float] | None:
    """``logprobs`` with ``-inf`` at the floor; None if one is NaN or
    ``+inf`` (no probability: a broken report, not a value)."""
    if logprobs is None or all(map(math.isfinite, logprobs)):
        return logprobs
    if any(math.isnan(x) or x == math.inf for x in logprobs):
        return None
    return [max(x, LOGPROB_FLOOR) for x in logprobs]
