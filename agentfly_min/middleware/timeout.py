"""A time limit on each call that passes through."""

from __future__ import annotations

import logging

import anyio

from .._validation import require_positive
from ..errors import GenerationTimeoutError
from ..records import Completion, Generate, Middleware, Request

__all__ = ["timeout"]

_log = logging.getLogger("agentfly_min.timeout")


def timeout(seconds: float) -> Middleware:
    """Cancel the wrapped call after ``seconds`` and raise
    :class:`~agentfly_min.errors.GenerationTimeoutError` (a transient error,
    so a retry layer outside it retries; see :func:`compose` for the two
    orders). Cancelling the call closes its connection or aborts it in the
    engine, so the server stops working on it."""
    require_positive("timeout.seconds", seconds)

    def layer(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            # move_on_after rather than fail_after: a TimeoutError raised by
            # the inner call itself must not be mistaken for our deadline.
            with anyio.move_on_after(seconds) as scope:
                return await inner(request)
            if scope.cancelled_caught:
                _log.info("a call ran past its %g s limit and was cancelled", seconds)
                raise GenerationTimeoutError(seconds)
            raise AssertionError("unreachable: the cancel scope exited without a result")

        return generate

    return layer
