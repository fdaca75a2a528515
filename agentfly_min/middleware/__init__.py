"""Middleware: functions from ``Generate`` to ``Generate``."""

from .compose import compose
from .concurrency import concurrency_limit
from .rate_limit import estimate_tokens, rate_limit
from .retry import backoff_delay, is_transient, retry, retry_reason, server_retry_after
from .stream import stream_concurrency_limit, stream_rate_limit, stream_retry, stream_timeout
from .timeout import timeout

__all__ = [
    "compose",
    "concurrency_limit",
    "rate_limit",
    "estimate_tokens",
    "retry",
    "is_transient",
    "server_retry_after",
    "backoff_delay",
    "timeout",
    "retry_reason",
    "stream_retry",
    "stream_timeout",
    "stream_rate_limit",
    "stream_concurrency_limit",
]
