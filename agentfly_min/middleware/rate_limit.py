"""Requests-per-minute and tokens-per-minute limits (GCRA)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Annotated

import anyio
import msgspec
from msgspec import Meta

from .._validation import require, require_positive
from ..errors import ConfigError
from ..records import Completion, Generate, Middleware, Request

__all__ = ["rate_limit", "estimate_tokens"]

_log = logging.getLogger("agentfly_min.rate_limit")


class _Gcra:
    """The generic cell rate algorithm: ``earliest`` says when a call may
    start, ``book`` charges a call that starts.

    Each unit advances the theoretical arrival time (TAT) by ``interval``; a
    call may start once ``TAT - tolerance <= now``. Over any window of length
    ``w`` at most ``tolerance / interval + 1 + w / interval`` units start, so
    the rate holds over every window, not just on average.
    """

    def __init__(self, interval: float, tolerance: float) -> None:
        self._interval = interval
        self._tolerance = tolerance
        self._tat = -math.inf

    def earliest(self, now: float) -> float:
        return max(now, self._tat - self._tolerance)

    def book(self, start: float, cost: float) -> None:
        self._tat = max(self._tat, start) + cost * self._interval

    def adjust(self, cost: float) -> None:
        """Charge (or refund, if negative) units after the fact."""
        self._tat += cost * self._interval


class _Limiter:
    """The queue and the two cell-rate algorithms behind :func:`rate_limit`."""

    def __init__(
        self,
        requests: _Gcra | None,
        tokens: _Gcra | None,
        estimate: Callable[[Request], int],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._requests = requests
        self._tokens = tokens
        self._estimate = estimate
        self._clock = clock
        self._sleep = sleep
        self._queue = anyio.Lock()  # FIFO: waiters are served in the order they came

    async def wait_turn(self, request: Request) -> tuple[int, float]:
        """Wait for the request's turn and book it; (tokens booked, seconds waited)."""
        tokens, requests, clock = self._tokens, self._requests, self._clock
        cost = self._estimate(request) if tokens is not None else 0
        arrived = clock()
        held = self._queue.locked()  # others are ahead of us: that wait counts
        async with self._queue:
            while True:
                now = clock()
                start = now
                if tokens is not None:
                    start = tokens.earliest(start)
                if requests is not None:
                    start = requests.earliest(start)
                if start <= now:
                    break
                # Cancelled here, the caller leaves the queue with nothing booked.
                held = True
                await self._sleep(start - now)
            if tokens is not None:
                tokens.book(now, float(cost))
            if requests is not None:
                requests.book(now, 1.0)
        waited = now - arrived if held else 0.0
        if waited > 0:
            _log.debug("rate limit held a request for %.3f s", waited)
        return cost, waited

    def settle(self, booked: int, used: int) -> None:
        """Correct a booking by the tokens really used (unknown, 0: keep it)."""
        if self._tokens is not None and used > 0:
            self._tokens.adjust(float(used - booked))

    def release(self, booked: int) -> None:
        """Refund a booking whose request failed before any usage came back."""
        if self._tokens is not None and booked > 0:
            self._tokens.adjust(-float(booked))


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
    ``usage.total_tokens``. A call that completes without usage keeps its
    estimate (a refund to zero would let the limit slip for a server that
    never reports usage); a call that fails releases it (a request refused
    at the door spends nothing, and its estimate, 12.5M tokens for 50 MB,
    would hold everyone behind it for 20 minutes at 600k a minute).
    The token burst is one call: over any window of ``w`` seconds the
    tokens booked are at most one call's plus ``w * tokens_per_minute / 60``.

    Waiting callers form one first-come, first-served queue, and a call is
    charged only when it starts: the head of the queue sleeps until its
    start time, books, and hands over to the next. A caller cancelled while
    it waits (a timeout, a cancelled chain) leaves the queue without a
    booking, so the callers after it do not wait for slots nobody used.

    The limiter is built here, once, and shared by everything this middleware
    wraps. The time a call waited is added to ``Completion.rate_limit_seconds``.
    ``clock`` and ``sleep`` are injectable for tests; by default they are
    anyio's, so this runs on asyncio and trio.
    """
    limiter = make_limiter(requests_per_minute, tokens_per_minute, burst, estimate, clock, sleep)

    def layer(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            booked, waited = await limiter.wait_turn(request)
            try:
                completion = await inner(request)
            except Exception:
                limiter.release(booked)
                raise
            limiter.settle(booked, completion.usage.total_tokens)
            if waited > 0:
                completion = msgspec.structs.replace(completion, rate_limit_seconds=completion.rate_limit_seconds + waited)
            return completion

        return generate

    return layer


def make_limiter(
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    burst: int,
    estimate: Callable[[Request], int],
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> _Limiter:
    """The limiter :func:`rate_limit` (and its streaming twin) wrap, checked here."""
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

    return _Limiter(requests, tokens, estimate, clock, sleep)
