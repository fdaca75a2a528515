"""Retrying transient failures with capped, jittered exponential backoff."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Annotated

import anyio
import msgspec
from msgspec import Meta

from .._validation import require, require_positive
from ..errors import RetriesExhaustedError, TransientError, TransportError
from ..records import Completion, Generate, Middleware, Request

__all__ = ["retry", "is_transient", "server_retry_after", "backoff_delay", "retry_reason"]

_log = logging.getLogger("agentfly_min.retry")


def retry_reason(error: TransportError) -> str:
    """A short name for why an attempt failed, to count by: ``"HTTP 429"``,
    ``"timeout"``, ``"connection"``, else the error's type."""
    if error.status is not None:
        return f"HTTP {error.status}"
    if isinstance(error, TimeoutError) or "timed out" in str(error):
        return "timeout"
    if "connection" in str(error):
        return "connection"
    return type(error).__name__


def is_transient(error: TransportError) -> bool:
    """The default policy: retry exactly the errors typed as transient."""
    return isinstance(error, TransientError)


def server_retry_after(error: TransportError) -> float | None:
    """The delay the server asked for (``Retry-After`` / ``retry-after-ms``),
    which transports put on :class:`TransientError`."""
    return error.retry_after if isinstance(error, TransientError) else None


def backoff_delay(retry_number: int, *, initial: float, maximum: float, jitter: float, uniform: float) -> float:
    """``min(maximum, initial * 2 ** (retry_number - 1)) * (1 - jitter * uniform)``
    where ``uniform`` is drawn from [0, 1): 0.5 s, 1 s, 2 s, ... capped at
    ``maximum``, each shortened by up to ``jitter`` of itself so that clients
    failing together do not retry together."""
    return min(maximum, initial * 2.0 ** (retry_number - 1)) * (1.0 - jitter * uniform)


def retry(
    *,
    max_retries: int = 5,
    initial_backoff: float = 0.5,
    max_backoff: float = 8.0,
    jitter: float = 0.25,
    max_retry_after: float = 60.0,
    retry_on: Callable[[TransportError], bool] = is_transient,
    retry_after: Callable[[TransportError], float | None] = server_retry_after,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    uniform: Callable[[], float] = random.random,
) -> Middleware:
    """Retry failed calls up to ``max_retries`` times after the first attempt.

    Only a :class:`~agentfly_min.errors.TransportError` for which
    ``retry_on`` says yes is retried (by default: transient ones); anything
    else, and cancellation above all, propagates at once. Between attempts it
    sleeps what the server asked for (``retry_after(error)``) when it asked,
    else :func:`backoff_delay`. A server asking for more than
    ``max_retry_after`` seconds ends the retries at once rather than parking
    the caller. Giving up raises
    :class:`~agentfly_min.errors.RetriesExhaustedError` saying why, with the
    last error attached. A completion records how many attempts it took in
    ``Completion.attempts`` and why each failed one failed in
    ``Completion.retries`` (see :func:`retry_reason`); every retry is logged
    on the ``agentfly_min.retry`` logger.
    """
    require("retry.max_retries", max_retries, Annotated[int, Meta(ge=0)])
    require_positive("retry.initial_backoff", initial_backoff)
    require_positive("retry.max_backoff", max_backoff)
    require_positive("retry.max_retry_after", max_retry_after)
    require("retry.jitter", jitter, Annotated[float, Meta(ge=0.0, le=1.0)])

    def layer(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            attempt = 1
            reasons: list[str] = []
            while True:
                try:
                    completion = await inner(request)
                except TransportError as error:
                    if not retry_on(error):
                        raise
                    if attempt > max_retries:
                        raise RetriesExhaustedError(
                            f"retry budget of {max_retries} retries used", attempts=attempt, last_error=error, retries=tuple(reasons)
                        ) from error
                    asked = retry_after(error)
                    if asked is not None and asked > max_retry_after:
                        raise RetriesExhaustedError(
                            f"server asked to wait {asked:g} s, more than max_retry_after={max_retry_after:g} s",
                            attempts=attempt,
                            last_error=error,
                            retries=tuple(reasons),
                        ) from error
                    delay = (
                        max(0.0, asked)
                        if asked is not None
                        else backoff_delay(
                            attempt, initial=initial_backoff, maximum=max_backoff, jitter=jitter, uniform=uniform()
                        )
                    )
                    reasons.append(retry_reason(error))
                    _log.info("attempt %d failed (%s); retrying in %.2f s", attempt, error, delay)
                    await sleep(delay)
                    attempt += 1
                    continue
                if attempt == 1:
                    return completion
                return msgspec.structs.replace(
                    completion, attempts=completion.attempts + attempt - 1, retries=(*reasons, *completion.retries)
                )

        return generate

    return layer
