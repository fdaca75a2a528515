"""Putting middleware together, in a stated order."""

from __future__ import annotations

from ..records import Generate, Middleware

__all__ = ["compose"]


def compose(*layers: Middleware) -> Middleware:
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
    """

    def apply(generate: Generate) -> Generate:
        for layer in reversed(layers):
            generate = layer(generate)
        return generate

    return apply
