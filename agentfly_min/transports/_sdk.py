"""The openai SDK as both the client transport and the tokenizer probe use
it: its client, built from a config, and its errors, mapped to ours."""

from __future__ import annotations

from typing import Any

import openai

from ..configs import ClientConfig
from ..errors import MalformedResponseError, TransientError, TransportError
from ._openai_wire import _api_key, status_error

__all__ = ["map_openai_error", "make_client"]


def map_openai_error(error: openai.OpenAIError) -> TransportError:
    """Turn an SDK error into ours: 408, 409, 429, 5xx, timeouts and
    connection failures are transient (with the status and any
    ``Retry-After``); other statuses are permanent; an unreadable body is
    malformed. A server's ``x-should-retry`` header overrides the status;
    its ``x-request-id`` is kept on the error."""
    if isinstance(error, openai.APIResponseValidationError):
        return MalformedResponseError(
            f"unreadable response: {error.message}", status=error.status_code, request_id=error.response.headers.get("x-request-id")
        )
    if isinstance(error, openai.APIStatusError):
        return status_error(error.status_code, error.response.headers, error.message)
    if isinstance(error, openai.APITimeoutError):
        return TransientError("request timed out")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return TransientError(f"connection failed{detail}")
    return TransportError(f"{type(error).__name__}: {error}")


def make_client(config: ClientConfig, http_client: Any) -> openai.AsyncOpenAI:
    """The SDK's client for ``config`` (its own retries off: retrying is the
    retry middleware's job, and two retry loops would multiply)."""
    options: dict[str, Any] = {
        "api_key": _api_key(config),
        "organization": config.organization,
        "project": config.project,
        "max_retries": 0,
        "timeout": config.timeout,
        "default_headers": config.default_headers,
    }
    if http_client is not None:
        options["http_client"] = http_client
    if config.azure_api_version is not None:
        # The Azure client puts the deployment (our model) in the path and
        # the API version in the query, and sends the key as ``api-key``.
        return openai.AsyncAzureOpenAI(azure_endpoint=config.base_url, api_version=config.azure_api_version, **options)
    return openai.AsyncOpenAI(base_url=config.base_url, **options)
