"""Choosing a transport from a config."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, overload

from ..configs import AsyncVerlConfig, AsyncVLLMConfig, BackendConfig, ClientConfig
from ..errors import ConfigError
from ..records import Generate, Middleware
from ..stream import Stream, StreamMiddleware, one_chunk
from .client import open_client, open_client_stream
from .verl import VerlServer, VerlTokenizer, open_verl
from .vllm import open_vllm, open_vllm_stream

__all__ = ["open_backend", "open_stream"]


@overload
def open_backend(
    config: ClientConfig,
    *,
    model: str | None = None,
    middleware: Middleware | None = None,
    http_client: Any = None,
    tokenizer: Any = None,
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
    http_client: Any = None,
) -> AbstractAsyncContextManager[Generate]:
    """Open the transport ``config`` describes; use as
    ``async with open_backend(config, ...) as generate: ...``.

    - :class:`ClientConfig`: an OpenAI-compatible endpoint; ``model``
      overrides ``config.model``; ``middleware`` replaces the default stack
      (retry, concurrency, rate limit, timeout); ``http_client`` is the
      SDK's HTTP client to use; with ``config.token_ids``, ``tokenizer`` is
      checked against the server's on entry (see :func:`open_client`).
    - :class:`AsyncVLLMConfig`: an in-process vLLM engine for ``model`` (a
      model folder or hub id), shut down on exit.
    - :class:`AsyncVerlConfig`: verl's rollout client ``server`` (what verl
      hands an agent loop) and the model's ``tokenizer``.
    """
    if isinstance(config, ClientConfig):
        return open_client(
            config, model=None if model is None else str(model), middleware=middleware, http_client=http_client, tokenizer=tokenizer
        )
    if isinstance(config, AsyncVLLMConfig):
        if model is None:
            raise ConfigError("open_backend.model", "an AsyncVLLMConfig needs the model path (Agent.model_name_or_path)")
        return open_vllm(config, model, middleware=middleware)
    if server is None or tokenizer is None:
        raise ConfigError("open_backend", "an AsyncVerlConfig needs verl's `server` client and the `tokenizer`")
    return open_verl(config, server, tokenizer, sampling_params=sampling_params, middleware=middleware)


@overload
def open_stream(
    config: ClientConfig, *, model: str | None = None, middleware: StreamMiddleware | None = None, http_client: Any = None
) -> AbstractAsyncContextManager[Stream]: ...
@overload
def open_stream(
    config: AsyncVLLMConfig, *, model: str | os.PathLike[str], middleware: StreamMiddleware | None = None
) -> AbstractAsyncContextManager[Stream]: ...
@overload
def open_stream(
    config: AsyncVerlConfig,
    *,
    server: VerlServer,
    tokenizer: VerlTokenizer,
    sampling_params: Mapping[str, Any] | None = None,
    middleware: StreamMiddleware | None = None,
) -> AbstractAsyncContextManager[Stream]: ...
def open_stream(
    config: BackendConfig,
    *,
    model: str | os.PathLike[str] | None = None,
    middleware: StreamMiddleware | None = None,
    server: VerlServer | None = None,
    tokenizer: VerlTokenizer | None = None,
    sampling_params: Mapping[str, Any] | None = None,
    http_client: Any = None,
) -> AbstractAsyncContextManager[Stream]:
    """The streaming twin of :func:`open_backend`: ``async with
    open_stream(config, ...) as stream:``, then ``async with stream(request)
    as chunks``. The client streams chat (or token-id) completions with its
    default streaming stack (retry before the first chunk, limits, first-
    chunk and idle deadlines) unless ``middleware`` replaces it; the vLLM
    engine streams its deltas; verl has no streaming, so its stream is one
    chunk per sample when the completion is done."""
    if isinstance(config, ClientConfig):
        return open_client_stream(
            config, model=None if model is None else str(model), middleware=middleware, http_client=http_client
        )
    if isinstance(config, AsyncVLLMConfig):
        if model is None:
            raise ConfigError("open_stream.model", "an AsyncVLLMConfig needs the model path (Agent.model_name_or_path)")
        return open_vllm_stream(config, model, middleware=middleware)
    if server is None or tokenizer is None:
        raise ConfigError("open_stream", "an AsyncVerlConfig needs verl's `server` client and the `tokenizer`")
    return _verl_stream(config, server, tokenizer, sampling_params, middleware)


@asynccontextmanager
async def _verl_stream(
    config: AsyncVerlConfig,
    server: VerlServer,
    tokenizer: VerlTokenizer,
    sampling_params: Mapping[str, Any] | None,
    middleware: StreamMiddleware | None,
) -> AsyncIterator[Stream]:
    async with open_verl(config, server, tokenizer, sampling_params=sampling_params) as generate:
        raw = one_chunk(generate)
        yield middleware(raw) if middleware is not None else raw
