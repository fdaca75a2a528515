"""Putting middleware together, in a stated order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, overload

__all__ = ["compose"]

T = TypeVar("T")


@overload
def compose() -> Callable[[T], T]: ...
@overload
def compose(*layers: Callable[[T], T]) -> Callable[[T], T]: ...
def compose(*layers: Callable[[T], T]) -> Callable[[T], T]:
    """Stack middleware; the first layer listed is the outermost.

    ``compose(a, b, c)(generate) == a(b(c(generate)))``: a request passes
    through ``a`` first and reaches ``generate`` last, and the completion
    comes back the other way (as in tower's ``ServiceBuilder``). So order
    carries meaning:

    - ``compose(retry(...), timeout(5))``: the timeout is inside the retry, so
      each attempt gets 5 s and a timed-out attempt is retried.
    - ``compose(timeout(5), retry(...))``: the timeout is outside, so it is one
      overall deadline for all attempts and the backoff sleeps between them.
    - Put ``concurrency_limit`` outside ``rate_limit``: a request first waits
      for a slot, then for its rate-limit turn, so slots freed together cannot
      release a burst past the rate.

    The same holds for streaming middleware (``Stream -> Stream``, see
    :mod:`agentfly_min.middleware.stream`).
    """

    def apply(transport: T) -> T:
        for layer in reversed(layers):
            transport = layer(transport)
        return transport

    return apply
