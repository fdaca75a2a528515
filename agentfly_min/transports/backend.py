"""Choosing a transport from a config."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from ..configs import BackendConfig, ClientConfig
from ..records import Generate, Middleware
from .client import open_client

__all__ = ["open_backend"]


def open_backend(
    config: BackendConfig,
    *,
    model: str | None = None,
    middleware: Middleware | None = None,
) -> AbstractAsyncContextManager[Generate]:
    """Open the transport ``config`` describes; use as
    ``async with open_backend(config) as generate: ...``.

    - :class:`ClientConfig`: an OpenAI-compatible endpoint; ``model``
      overrides ``config.model``; ``middleware`` replaces the default stack.
    """
    if isinstance(config, ClientConfig):
        return open_client(config, model=model, middleware=middleware)
    raise TypeError(f"no transport for {type(config).__name__} is available in this build")
