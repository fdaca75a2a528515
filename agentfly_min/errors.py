"""The typed errors agentfly_min raises.

Everything we raise derives from :class:`AgentflyError`. Generation failures
derive from :class:`TransportError` and are split by what a caller should do
about them: :class:`TransientError` may succeed when tried again (the retry
middleware only ever retries these), :class:`PermanentError` will not.
"""

from __future__ import annotations

__all__ = [
    "AgentflyError",
    "ConfigError",
    "StructuredOutputError",
    "TransportError",
    "TransientError",
    "PermanentError",
    "MalformedResponseError",
    "ContextLengthError",
    "TransportClosedError",
    "GenerationTimeoutError",
    "RetriesExhaustedError",
    "TokenizerMismatchError",
    "OutputBusyError",
]


class AgentflyError(Exception):
    """Base class of every error agentfly_min raises on purpose."""


class ConfigError(AgentflyError, ValueError):
    """A config or record was built with a value outside its allowed range.

    ``field`` names the offending field (``"ClientConfig.timeout"``).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class StructuredOutputError(AgentflyError, ValueError):
    """A model's answer is not the JSON of the type it was asked for."""


class TransportError(AgentflyError):
    """A generation request failed.

    ``status`` is the HTTP status when the transport speaks HTTP, else None;
    ``request_id`` the server's id of the request (``x-request-id``), when
    it sent one: what its operators ask for.
    """

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message if request_id is None else f"{message} (request id {request_id})")
        self.status = status
        self.request_id = request_id


class TransientError(TransportError):
    """A failure that may go away when retried: 408, 409, 429, 5xx, timeouts,
    dropped connections, an engine aborting a request while weights update.

    ``retry_after`` is the server's requested delay in seconds, if it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.retry_after = retry_after


class PermanentError(TransportError):
    """A failure that retrying will not fix: 400, 401, 403, 404, 422, a prompt
    longer than the model's context, an unknown model."""


class ContextLengthError(PermanentError):
    """The prompt leaves no room to generate within the model's context. The
    agent loop ends such an episode with ``finish_reason="context"``."""


class TransportClosedError(PermanentError):
    """A ``generate`` was called after the context manager that opened it
    (and owned its engine, client or thread) had exited."""


class MalformedResponseError(TransportError):
    """The server answered, but not with a chat completion we can read."""


class GenerationTimeoutError(TransientError, TimeoutError):
    """A request ran past its time limit (``seconds``): the timeout
    middleware's, or on the aiohttp wire path aiohttp's own per-attempt
    deadline, which stands in for that layer in the default stack."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"generation did not finish within {seconds:g} s")
        self.seconds = seconds


class RetriesExhaustedError(TransportError):
    """The retry middleware gave up; ``last_error`` is the final failure,
    ``attempts`` how many were made and ``retries`` why each retried one
    failed (as in ``Completion.retries``). The message says why it stopped."""

    def __init__(self, reason: str, *, attempts: int, last_error: TransportError, retries: tuple[str, ...] = ()) -> None:
        super().__init__(
            f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {reason}; "
            f"last error: {last_error}",
            status=last_error.status,
        )
        self.request_id = last_error.request_id
        self.attempts = attempts
        self.retries = retries
        self.last_error = last_error


class TokenizerMismatchError(AgentflyError, ValueError):
    """The client's tokenizer and the server's make other ids of the same
    text: token-id requests would be read as other text."""


class OutputBusyError(AgentflyError, RuntimeError):
    """Another rollout is appending to the same output file."""
