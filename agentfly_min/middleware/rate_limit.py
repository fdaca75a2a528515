"""Requests-per-minute and tokens-per-minute limits (GCRA)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated

import anyio
from msgspec import Meta

from .._validation import require, require_positive
from ..errors import ConfigError
from ..records import Completion, Generate, Middleware, Request

__all__ = ["rate_limit", "estimate_tokens"]


class _Gcra:
    """The generic cell rate algorithm, as a scheduler: ``reserve`` books the
    earliest time at which a call of ``cost`` units conforms and returns it.

    Each unit advances the theoretical arrival time (TAT) by ``interval``; a
    call may start once ``TAT - tolerance <= now``. Over any window of length
    ``w`` at most ``tolerance / interval + 1 + w / interval`` units start, so
    the rate holds over every window, not just on average.
    """

    def __init__(self, interval: float, tolerance: float) -> None:
        self._interval = interval
        self._tolerance = tolerance
        self._tat = -math.inf

    def reserve(self, now: float, cost: float) -> float:
        start = max(now, self._tat - self._tolerance)
        self._tat = max(self._tat, start) + cost * self._interval
        return start

    def adjust(self, cost: float) -> None:
        """Charge (or refund, if negative) units after the fact."""
        self._tat += cost * self._interval


def estimate_tokens(request: Request, default_max_new_tokens: int = 1024) -> int:
    """A pessimistic guess at a request's total tokens, made before it runs:
    the prompt (its ids, else about 4 characters a token) plus ``n`` times
    the new-token budget. The limiter corrects it by the real usage after."""
    if request.prompt_ids is not None:
        prompt = len(request.prompt_ids)
    else:
        prompt = sum(len(m.text) for m in request.messages) // 4 + 4 * len(request.messages)
    budget = request.max_new_tokens if request.max_new_tokens is not None else default_max_new_tokens
    return prompt + request.n * budget


def rate_limit(
    requests_per_minute: float | None = None,
    *,
    tokens_per_minute: float | None = None,
    burst: int = 1,
    estimate: Callable[[Request], int] = estimate_tokens,
    clock: Callable[[], float] = anyio.current_time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Middleware:
    """Hold calls to ``requests_per_minute`` and/or ``tokens_per_minute``.

    Requests: ``burst`` calls may start back to back; after that they start
    ``60 / requests_per_minute`` s apart. In any window of ``w`` seconds at
    most ``burst + w * requests_per_minute / 60`` calls start.

    Tokens: a call waits until the tokens already spent (at
    ``tokens_per_minute``) have drained, then books ``estimate(request)``
    tokens; when it completes, the booking is corrected to the real
    ``usage.total_tokens`` (failed calls keep their estimate).

    The limiter is built here, once, and shared by everything this middleware
    wraps. A call cancelled while it waits keeps its booking: the rate can
    only come out lower, never higher. ``clock`` and ``sleep`` are injectable
    for tests; by default they are anyio's, so this runs on asyncio and trio.
    """
    if requests_per_minute is None and tokens_per_minute is None:
        raise ConfigError("rate_limit", "give requests_per_minute, tokens_per_minute, or both")
    require("rate_limit.burst", burst, Annotated[int, Meta(ge=1)])
    requests: _Gcra | None = None
    tokens: _Gcra | None = None
    if requests_per_minute is not None:
        require_positive("rate_limit.requests_per_minute", requests_per_minute)
        interval = 60.0 / requests_per_minute
        requests = _Gcra(interval, (burst - 1) * interval)
    if tokens_per_minute is not None:
        require_positive("rate_limit.tokens_per_minute", tokens_per_minute)
        tokens = _Gcra(60.0 / tokens_per_minute, 0.0)

    async def wait_turn(request: Request) -> int:
        now = clock()
        start = now
        booked = 0
        # Both reservations are taken before the first await, so concurrent
        # callers are ordered without a lock. The request slot is booked last,
        # from the token start, so the booked start is the real one and the
        # request rate is exact even when tokens delay a call.
        if tokens is not None:
            booked = estimate(request)
            start = tokens.reserve(now, float(booked))
        if requests is not None:
            start = requests.reserve(start, 1.0)
        if start > now:
            await sleep(start - now)
        return booked

    def layer(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            booked = await wait_turn(request)
            completion = await inner(request)
            if tokens is not None:
                tokens.adjust(float(completion.usage.total_tokens - booked))
            return completion

        return generate

    return layer
