"""Middleware for streaming transports: ``Stream -> Stream``.

The rules, which differ from :data:`~agentfly_min.Generate`'s because a
stream hands out its result in pieces:

- :func:`stream_retry` retries a stream that failed before its first chunk
  reached the consumer (opening it, or the wait for that chunk), with the
  same policy and backoff as :func:`~agentfly_min.middleware.retry`. Once a
  chunk was delivered, an error surfaces to the consumer: a stream is never
  restarted behind its back (it would see the same text twice).
- :func:`stream_timeout` gives the first chunk ``first_chunk`` seconds
  (opening the stream included) and every later one ``idle`` seconds after
  the one before; running over either raises
  :class:`~agentfly_min.errors.GenerationTimeoutError` (transient, so a
  retry outside it retries, before the first chunk only).
- :func:`stream_rate_limit` and :func:`stream_concurrency_limit` hold a
  stream as their ``Generate`` twins hold a call: the rate limit when it
  starts (its usage corrects the token booking when it ends), a concurrency
  slot for as long as it is open.
- Leaving the consumer's ``async with`` (``break``, an exception, a cancel
  scope) closes every layer and the transport's stream, on asyncio and trio.

They compose with :func:`~agentfly_min.compose`, first listed outermost.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager

import anyio

from .._validation import require_positive
from ..errors import GenerationTimeoutError, RetriesExhaustedError, TransportError
from ..records import Request
from ..stream import Chunk, Stream, StreamMiddleware
from .rate_limit import estimate_tokens, make_limiter
from .retry import backoff_delay, is_transient, retry_reason, server_retry_after

__all__ = ["stream_retry", "stream_timeout", "stream_rate_limit", "stream_concurrency_limit"]

_log = logging.getLogger("agentfly_min.retry")


async def _rest(first: Chunk | None, iterator: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    if first is None:
        return
    yield first
    async for chunk in iterator:
        yield chunk


def stream_retry(
    *,
    max_retries: int = 5,
    initial_backoff: float = 0.5,
    max_backoff: float = 8.0,
    jitter: float = 0.25,
    max_retry_after: float = 60.0,
    retry_on: Callable[[TransportError], bool] = is_transient,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    uniform: Callable[[], float] = random.random,
) -> StreamMiddleware:
    """Retry a stream that fails before its first chunk (see the module's
    rules); afterwards errors surface. Gives up with
    :class:`~agentfly_min.errors.RetriesExhaustedError`."""
    require_positive("stream_retry.initial_backoff", initial_backoff)
    require_positive("stream_retry.max_backoff", max_backoff)

    def layer(inner: Stream) -> Stream:
        @asynccontextmanager
        async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
            attempt = 1
            reasons: list[str] = []
            while True:
                stack = AsyncExitStack()
                try:
                    chunks = await stack.enter_async_context(inner(request))
                    iterator = chunks.__aiter__()
                    try:
                        first: Chunk | None = await iterator.__anext__()
                    except StopAsyncIteration:
                        first = None
                except TransportError as error:
                    await stack.aclose()
                    if not retry_on(error):
                        raise
                    if attempt > max_retries:
                        raise RetriesExhaustedError(
                            f"retry budget of {max_retries} retries used", attempts=attempt, last_error=error, retries=tuple(reasons)
                        ) from error
                    asked = server_retry_after(error)
                    if asked is not None and asked > max_retry_after:
                        raise RetriesExhaustedError(
                            f"server asked to wait {asked:g} s, more than max_retry_after={max_retry_after:g} s",
                            attempts=attempt,
                            last_error=error,
                            retries=tuple(reasons),
                        ) from error
                    delay = asked if asked is not None else backoff_delay(attempt, initial=initial_backoff, maximum=max_backoff, jitter=jitter, uniform=uniform())
                    reasons.append(retry_reason(error))
                    _log.info("stream attempt %d failed before its first chunk (%s: %s); retrying in %.2f s", attempt, retry_reason(error), error, delay)
                    await sleep(delay)
                    attempt += 1
                    continue
                except BaseException:
                    await stack.aclose()
                    raise
                break
            async with stack, aclosing(_rest(first, iterator)) as rest:
                yield rest

        return stream

    return layer


def stream_timeout(*, first_chunk: float | None = None, idle: float | None = None) -> StreamMiddleware:
    """A deadline for the first chunk (opening included) and one between
    chunks; see the module's rules."""
    if first_chunk is not None:
        require_positive("stream_timeout.first_chunk", first_chunk)
    if idle is not None:
        require_positive("stream_timeout.idle", idle)

    def layer(inner: Stream) -> Stream:
        @asynccontextmanager
        async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
            async with AsyncExitStack() as stack:
                deadline = anyio.current_time() + first_chunk if first_chunk is not None else None
                with anyio.move_on_after(first_chunk if first_chunk is not None else float("inf")) as scope:
                    chunks = await stack.enter_async_context(inner(request))
                if scope.cancelled_caught:
                    raise GenerationTimeoutError(first_chunk or 0.0)
                async with aclosing(_timed(chunks.__aiter__(), deadline, first_chunk, idle)) as timed:
                    yield timed

        return stream

    return layer


async def _timed(
    iterator: AsyncIterator[Chunk], deadline: float | None, first: float | None, idle: float | None
) -> AsyncGenerator[Chunk, None]:
    limit = first
    while True:
        budget = (deadline - anyio.current_time()) if deadline is not None else (idle if idle is not None else float("inf"))
        with anyio.move_on_after(max(budget, 0.0)) as scope:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            raise GenerationTimeoutError(limit if limit is not None else 0.0)
        yield chunk
        deadline = anyio.current_time() + idle if idle is not None else None
        limit = idle


def stream_concurrency_limit(limit: int | None = None, *, semaphore: anyio.Semaphore | None = None) -> StreamMiddleware:
    """At most ``limit`` streams open at once (a slot is held until the
    stream is closed); pass ``semaphore`` to share one bound."""
    if (limit is None) == (semaphore is None):
        raise TypeError("stream_concurrency_limit takes exactly one of limit or semaphore")
    if semaphore is None:
        assert limit is not None
        require_positive("stream_concurrency_limit.limit", limit)
        semaphore = anyio.Semaphore(limit, fast_acquire=True)  # see concurrency_limit
    sem = semaphore

    def layer(inner: Stream) -> Stream:
        @asynccontextmanager
        async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
            async with sem, inner(request) as chunks:
                yield chunks

        return stream

    return layer


def stream_rate_limit(
    requests_per_minute: float | None = None,
    *,
    tokens_per_minute: float | None = None,
    burst: int = 1,
    estimate: Callable[[Request], int] = estimate_tokens,
    clock: Callable[[], float] = anyio.current_time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> StreamMiddleware:
    """:func:`~agentfly_min.rate_limit` for streams: a stream starts when
    its turn comes; the usage of its last chunk corrects its token booking."""
    limiter = make_limiter(requests_per_minute, tokens_per_minute, burst, estimate, clock, sleep)

    def layer(inner: Stream) -> Stream:
        @asynccontextmanager
        async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
            booked, _ = await limiter.wait_turn(request)
            used = 0

            async def counted(chunks: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
                nonlocal used
                async for chunk in chunks:
                    if chunk.usage is not None:
                        used = chunk.usage.total_tokens
                    yield chunk

            failed = False
            try:
                async with inner(request) as chunks, aclosing(counted(chunks)) as tallied:
                    yield tallied
            except Exception:
                failed = True
                raise
            finally:
                if failed and used == 0:
                    limiter.release(booked)  # refused or broken before any usage: nothing spent
                else:
                    limiter.settle(booked, used)

        return stream

    return layer
