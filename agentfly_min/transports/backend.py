"""Choosing a transport from a config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, overload

from ..configs import AsyncVerlConfig, AsyncVLLMConfig, BackendConfig, ClientConfig
from ..errors import ConfigError
from ..records import Generate, Middleware
from .client import open_client
from .verl import VerlServer, VerlTokenizer, open_verl
from .vllm import open_vllm

__all__ = ["open_backend"]


@overload
def open_backend(
    config: ClientConfig, *, model: str | None = None, middleware: Middleware | None = None
) -> AbstractAsyncContextManager[Generate]: ...
@overload
def open_backend(
    config: AsyncVLLMConfig, *, model: str | os.PathLike[str], middleware: Middleware | None = None
) -> AbstractAsyncContextManager[Generate]: ...
@overload
def open_backend(
    config: AsyncVerlConfig,
    *,
    server: VerlServer,
    tokenizer: VerlTokenizer,
    sampling_params: Mapping[str, Any] | None = None,
    middleware: Middleware | None = None,
) -> AbstractAsyncContextManager[Generate]: ...
def open_backend(
    config: BackendConfig,
    *,
    model: str | os.PathLike[str] | None = None,
    middleware: Middleware | None = None,
    server: VerlServer | None = None,
    tokenizer: VerlTokenizer | None = None,
    sampling_params: Mapping[str, Any] | None = None,
) -> AbstractAsyncContextManager[Generate]:
    """Open the transport ``config`` describes; use as
    ``async with open_backend(config, ...) as generate: ...``.

    - :class:`ClientConfig`: an OpenAI-compatible endpoint; ``model``
      overrides ``config.model``; ``middleware`` replaces the default stack
      (retry, concurrency, rate limit, timeout).
    - :class:`AsyncVLLMConfig`: an in-process vLLM engine for ``model`` (a
      model folder or hub id), shut down on exit.
    - :class:`AsyncVerlConfig`: verl's rollout client ``server`` (what verl
      hands an agent loop) and the model's ``tokenizer``.
    """
    if isinstance(config, ClientConfig):
        return open_client(config, model=None if model is None else str(model), middleware=middleware)
    if isinstance(config, AsyncVLLMConfig):
        if model is None:
            raise ConfigError("open_backend.model", "an AsyncVLLMConfig needs the model path (Agent.model_name_or_path)")
        return open_vllm(config, model, middleware=middleware)
    if server is None or tokenizer is None:
        raise ConfigError("open_backend", "an AsyncVerlConfig needs verl's `server` client and the `tokenizer`")
    return open_verl(config, server, tokenizer, sampling_params=sampling_params, middleware=middleware)
