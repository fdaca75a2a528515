"""The in-process vLLM transport (``vllm.AsyncLLMEngine`` / ``AsyncLLM``).

vLLM's engine is bound to an asyncio loop. Opened from asyncio, it runs on
the caller's own loop, as it would without this library: no thread, no hop
per call. Opened from trio (or with ``own_thread=True``), it runs on an
asyncio loop of its own thread (see ``_bridge``), so the same engine serves
callers on asyncio and on trio and can outlive the event loops that use it (a
test session, say). The engine's start and shutdown are in ``_vllm_engine``;
this module sends requests to it. vLLM is imported lazily: this module
imports, and type-checks, without vLLM installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

from ..configs import AsyncVLLMConfig
from .._text import one_line
from ..errors import ContextLengthError, MalformedResponseError, PermanentError, TransientError, TransportClosedError
from ..records import Completion, Generate, Middleware, Output, Request, Usage
from ..templates.chat import prompt_ids
from ._chat import with_prompt
from ._finish import finish_reason
from ._sampling import vllm_options
from ..stream import Chunk, Stream, StreamMiddleware
from ._vllm_engine import VLLMEngine, engine_args, open_vllm_engine

__all__ = ["VLLMEngine", "open_vllm", "open_vllm_engine", "vllm_generate", "vllm_stream", "open_vllm_stream", "engine_args"]


def _sampler(max_model_len: int, *, delta: bool = False) -> Callable[[Request, int], Any]:
    """``params(request, prompt_len)``: vLLM's ``SamplingParams`` for one
    request. vLLM's names are looked up once, here (``from vllm import X``
    on every call went through vLLM's lazy module ``__getattr__``), and only
    what the request sets is passed, the rest left to vLLM's defaults."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    kind = RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY

    def params(request: Request, prompt_len: int) -> Any:
        room = max_model_len - prompt_len
        if room < 1:
            raise ContextLengthError(f"the prompt has {prompt_len} tokens, leaving no room in the model's context of {max_model_len}")
        # Clamped to the context left, as verl's server does: the answer then
        # ends with finish_reason "length" before max_new_tokens, and the
        # agent loop ends the episode with "context".
        max_tokens = min(request.max_new_tokens, room) if request.max_new_tokens is not None else room
        options: dict[str, Any] = {
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "max_tokens": max_tokens,
            "output_kind": kind,
        }
        if request.n != 1:
            options["n"] = request.n
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.logprobs:
            options["logprobs"] = 0
        options.update(vllm_options(request))
        return SamplingParams(**options)

    return params


def _output(choice: Any, with_logprobs: bool) -> Output:
    ids = tuple(choice.token_ids)
    logprobs = None
    if with_logprobs and choice.logprobs is not None:
        logprobs = tuple(step[token].logprob for token, step in zip(ids, choice.logprobs, strict=True))
    return Output(
        text=choice.text or "", finish_reason=finish_reason(choice.finish_reason), token_ids=ids, logprobs=logprobs
    )


def vllm_generate(engine: VLLMEngine) -> Generate:
    """The raw transport over a running engine: prompt ids in (rendered from
    the messages with the model's chat template when the request has none),
    sampled ids, text, logprobs and usage out. ``n > 1`` is sent as one
    request (vLLM fans it out). Cancelling a call aborts it in the engine.
    ``max_new_tokens`` is clamped to the context left; a prompt that leaves
    none raises :class:`ContextLengthError`. Whatever vLLM refuses is a
    :class:`PermanentError` (a full queue a :class:`TransientError`), and a
    call after the engine was shut down a :class:`TransportClosedError`."""

    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMServerError

    sampling = _sampler(engine.max_model_len)

    async def on_engine_loop(prompt: list[int], params: Any, request_id: str) -> Any:
        final = None
        # A TokensPrompt is a TypedDict: this dict is one.
        async for output in engine.engine.generate({"prompt_token_ids": prompt}, params, request_id):
            final = output
        return final

    async def generate(request: Request) -> Completion:
        if engine.closed:
            raise TransportClosedError("this vLLM transport was used after its engine was shut down")
        if engine.tokenizer is None and request.prompt_ids is None:
            raise PermanentError("this engine has no tokenizer (skip_tokenizer_init): send prompt_ids")
        prompt = prompt_ids(engine.tokenizer, request)
        try:
            params = sampling(request, len(prompt))
            final = await engine.run(on_engine_loop(prompt, params, engine.next_id(request.request_id)))
        except GracefulHTTPError as exc:  # queue full: the engine is busy, not broken
            raise TransientError(f"vLLM is overloaded: {one_line(str(exc))}") from exc
        except (ValueError, TypeError, VLLMClientError) as exc:  # vLLM's words for a request it will not take
            raise PermanentError(f"vLLM refused the request: {one_line(str(exc))}") from exc
        except VLLMServerError as exc:  # the engine died or failed (EngineDeadError, EngineGenerateError)
            raise PermanentError(f"vLLM engine failed: {one_line(str(exc))}") from exc
        if final is None:
            raise MalformedResponseError("vLLM returned no output")
        outputs = tuple(_output(choice, request.logprobs) for choice in final.outputs)
        completion = Completion(
            outputs=outputs,
            usage=Usage(
                prompt_tokens=len(prompt),
                completion_tokens=sum(len(o.token_ids or ()) for o in outputs),
                cached_tokens=getattr(final, "num_cached_tokens", None) or 0,  # prefix-cache hits
            ),
        )
        return with_prompt(completion, request, prompt)

    return generate


_END = object()  # the producer's last item


def vllm_stream(engine: VLLMEngine) -> Stream:
    """The streaming twin of :func:`vllm_generate`: the engine's delta
    outputs as chunks (text, sampled ids and their logprobs). The engine is
    driven on its own loop, which queues the deltas; the caller takes them
    from any loop. Leaving the stream's block aborts the request in the
    engine."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMServerError

    sampling = _sampler(engine.max_model_len, delta=True)

    @asynccontextmanager
    async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
        if engine.closed:
            raise TransportClosedError("this vLLM transport was used after its engine was shut down")
        if engine.tokenizer is None and request.prompt_ids is None:
            raise PermanentError("this engine has no tokenizer (skip_tokenizer_init): send prompt_ids")
        prompt = prompt_ids(engine.tokenizer, request)
        params = sampling(request, len(prompt))
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def produce() -> None:
            try:
                async for output in engine.engine.generate({"prompt_token_ids": prompt}, params, engine.next_id(request.request_id)):
                    queue.put_nowait(output)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, who types it
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(_END)

        producer = engine.submit(produce())
        try:
            deltas = _deltas(engine, queue, prompt, request.logprobs, GracefulHTTPError, (ValueError, TypeError, VLLMClientError), VLLMServerError)
            async with aclosing(deltas) as chunks:
                yield chunks
        finally:
            producer.cancel()  # leaving early: the engine aborts the request

    return stream


async def _deltas(
    engine: VLLMEngine,
    queue: asyncio.Queue[Any],
    prompt: list[int],
    with_logprobs: bool,
    overloaded: type[Exception],
    refused: tuple[type[Exception], ...],
    failed: type[Exception],
) -> AsyncGenerator[Chunk, None]:
    completion_tokens = cached_tokens = 0
    first = True
    while True:
        item = await engine.run(queue.get())
        if item is _END:
            yield Chunk(usage=Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens, cached_tokens=cached_tokens))
            return
        if isinstance(item, overloaded):
            raise TransientError(f"vLLM is overloaded: {one_line(str(item))}")
        if isinstance(item, refused):
            raise PermanentError(f"vLLM refused the request: {one_line(str(item))}")
        if isinstance(item, failed):
            raise PermanentError(f"vLLM engine failed: {one_line(str(item))}")
        if isinstance(item, BaseException):
            raise item
        cached_tokens = getattr(item, "num_cached_tokens", None) or cached_tokens
        for choice in item.outputs:
            ids = tuple(choice.token_ids)
            completion_tokens += len(ids)
            logprobs = None
            if with_logprobs and choice.logprobs is not None:
                logprobs = tuple(step[token].logprob for token, step in zip(ids, choice.logprobs, strict=True))
            done = choice.finish_reason is not None
            yield Chunk(
                index=choice.index,
                text=choice.text or "",
                token_ids=ids,
                logprobs=logprobs,
                finish_reason=finish_reason(choice.finish_reason) if done else None,
                prompt_ids=tuple(prompt) if first else None,
            )
            first = False


@asynccontextmanager
async def open_vllm(
    config: AsyncVLLMConfig,
    model: str | os.PathLike[str],
    *,
    middleware: Middleware | None = None,
    own_thread: bool | None = None,
) -> AsyncIterator[Generate]:
    """Start a vLLM engine for ``model`` (a local folder or a hub id) and yield
    a :data:`Generate` over it (wrapped in ``middleware`` if given); shut the
    engine down on exit. ``own_thread`` as for :func:`open_vllm_engine`."""
    async with open_vllm_engine(config, model, own_thread=own_thread) as engine:
        raw = vllm_generate(engine)
        yield middleware(raw) if middleware is not None else raw


@asynccontextmanager
async def open_vllm_stream(
    config: AsyncVLLMConfig,
    model: str | os.PathLike[str],
    *,
    middleware: StreamMiddleware | None = None,
    own_thread: bool | None = None,
) -> AsyncIterator[Stream]:
    """Start a vLLM engine for ``model`` and yield a :data:`Stream` over it
    (wrapped in ``middleware`` if given); shut the engine down on exit.
    ``own_thread`` as for :func:`open_vllm_engine`."""
    async with open_vllm_engine(config, model, own_thread=own_thread) as engine:
        raw = vllm_stream(engine)
        yield middleware(raw) if middleware is not None else raw
