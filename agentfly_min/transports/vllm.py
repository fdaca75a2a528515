"""The in-process vLLM transport (``vllm.AsyncLLMEngine`` / ``AsyncLLM``).

vLLM's engine is bound to an asyncio loop. Opened from asyncio, it runs on
the caller's own loop, as it would without this library: no thread, no hop
per call. Opened from trio (or with ``own_thread=True``), it runs on an
asyncio loop of its own thread (see ``_bridge``), so the same engine serves
callers on asyncio and on trio and can outlive the event loops that use it (a
test session, say). vLLM is imported lazily: this module imports, and
type-checks, without vLLM installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import difflib
import gc
import importlib
import itertools
import multiprocessing
import os
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ..configs import AsyncVLLMConfig
from ..local._shm import Process, descendants, shm_entries, sweep_shm
from .._text import one_line
from ..errors import (
    ConfigError,
    ContextLengthError,
    MalformedResponseError,
    PermanentError,
    TransientError,
    TransportClosedError,
)
from ..records import Completion, Generate, Middleware, Output, Request, Usage
from ._bridge import AsyncioThread, on_asyncio
from ..templates.chat import prompt_ids
from ._chat import with_prompt
from ._finish import finish_reason
from ._sampling import vllm_options
from ..stream import Chunk, Stream, StreamMiddleware

__all__ = ["VLLMEngine", "open_vllm", "open_vllm_engine", "vllm_generate", "vllm_stream", "open_vllm_stream", "engine_args"]

T = TypeVar("T")



def _check_model(model: str | os.PathLike[str]) -> str:
    path = Path(model).expanduser()
    text = str(model)
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError("model", f"{text} has no config.json: not a Hugging Face model folder")
        return str(path)
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError("model", f"{text} does not exist (and the model hub is offline or it is not a hub id)")
    return text  # an `org/name` hub id: vLLM fetches it


def engine_args(config: AsyncVLLMConfig, model: str | os.PathLike[str]) -> Any:
    """The ``vllm.AsyncEngineArgs`` for ``config``; ``engine_args`` keys are
    checked against vLLM's own list (a misspelt one is a :class:`ConfigError`
    naming the closest real ones). A table given for one of vLLM's config
    objects (``structured_outputs_config = {disable_any_whitespace = true}``)
    is built into it, as vLLM's command line does."""
    from vllm import AsyncEngineArgs

    known = {f.name: f for f in dataclasses.fields(AsyncEngineArgs)}
    extra: dict[str, Any] = {}
    for key, value in config.engine_args.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"AsyncVLLMConfig.engine_args.{key}", f"not an argument of vllm.AsyncEngineArgs{hint}")
        extra[key] = _config_object(known[key], value, key)
    named: dict[str, Any] = {
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "data_parallel_size": config.data_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "dtype": config.dtype,
        "enforce_eager": config.enforce_eager,
        "seed": config.seed,
        "trust_remote_code": config.trust_remote_code,
        "disable_log_stats": not config.log_stats,
    }
    optional = {
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "kv_cache_memory_bytes": config.kv_cache_memory_bytes,
        "enable_prefix_caching": config.enable_prefix_caching,
    }
    named.update({k: v for k, v in optional.items() if v is not None})
    return AsyncEngineArgs(model=_check_model(model), **named, **extra)


def _config_object(field: dataclasses.Field[Any], value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        return value
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if not dataclasses.is_dataclass(default) or isinstance(default, type):
        return value
    try:
        return type(default)(**value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"AsyncVLLMConfig.engine_args.{key}", one_line(str(exc))) from None


class VLLMEngine:
    """A running vLLM async engine, on its own asyncio thread or on the
    asyncio loop of the code that opened it.

    Start with :meth:`start` (blocking, own thread; from async code use
    :func:`open_vllm_engine`), stop with :meth:`close`. ``engine`` is vLLM's
    ``AsyncLLM``: :meth:`run` runs a coroutine that uses it on the engine's
    loop, for anything this library does not wrap.
    """

    def __init__(
        self,
        thread: AsyncioThread | None,
        engine: Any,
        tokenizer: Any,
        max_model_len: int,
        loop: asyncio.AbstractEventLoop | None = None,
        shm_before: set[str] | None = None,
        procs_before: set[Process] | None = None,
    ) -> None:
        if (thread is None) == (loop is None):
            raise ValueError("an engine runs either on its own thread or on a caller's loop")
        self._thread = thread
        self._loop = loop
        self._shm_before = shm_before
        self._procs_before = procs_before or set()
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._ids = itertools.count()
        self.closed = False

    @classmethod
    def start(cls, config: AsyncVLLMConfig, model: str | os.PathLike[str]) -> VLLMEngine:
        """Build the engine (tens of seconds on CPU). Bad arguments raise
        :class:`ConfigError` before anything starts."""
        shm_before, procs_before = shm_entries(), descendants()
        thread = AsyncioThread("agentfly-vllm")

        async def build() -> Any:
            return _build(config, model)

        try:
            engine = thread.run_blocking(build())
        except BaseException:
            thread.stop()
            raise
        try:
            tokenizer, max_len = _facts(config, engine)
        except BaseException:
            thread.call_blocking(engine.shutdown)
            thread.stop()
            raise
        return cls(thread, engine, tokenizer, max_len, shm_before=shm_before, procs_before=procs_before)

    @classmethod
    def start_for_loop(cls, config: AsyncVLLMConfig, model: str | os.PathLike[str], loop: asyncio.AbstractEventLoop) -> VLLMEngine:
        """Build an engine that will run on ``loop`` (blocking; call it from a
        worker thread, as :func:`open_vllm_engine` does). vLLM starts its
        tasks on the loop of the first call."""
        shm_before, procs_before = shm_entries(), descendants()
        engine = _build(config, model)  # no loop runs here: vLLM defers its tasks
        try:
            tokenizer, max_len = _facts(config, engine)
        except BaseException:
            engine.shutdown()
            raise
        return cls(None, engine, tokenizer, max_len, loop=loop, shm_before=shm_before, procs_before=procs_before)

    @property
    def own_thread(self) -> bool:
        """Whether the engine runs on a thread of its own (any caller's
        loop may use it) or on the loop that opened it (only that one)."""
        return self._thread is not None

    def close(self) -> None:
        """Shut the engine down (its engine-core process too), stop the
        thread, and remove the engine's queues from /dev/shm if its
        processes were killed before they could (vLLM kills an engine core
        that has not exited 5 s after SIGTERM, which a loaded machine hits)."""
        if self.closed:
            return
        self.closed = True
        # Taken before the shutdown: an engine core that dies first orphans its workers, which then are no one's children.
        dying = descendants() - self._procs_before
        try:
            if self._thread is None:  # vLLM cancels its tasks on the caller's loop thread-safely
                try:
                    self.engine.shutdown(timeout=120)
                finally:
                    self._forget()
            else:
                try:
                    self._thread.call_blocking(self.engine.shutdown, timeout=120)
                finally:
                    # Drop the engine on its own thread: AsyncLLM.__del__ shuts
                    # down again, which fails if it only runs at interpreter exit.
                    self._thread.call_blocking(self._forget)
                    self._thread.stop()
        finally:
            if self._shm_before is not None:
                sweep_shm(self._shm_before, dying=dying)
            # vLLM's shutdown leaves its exited engine core unwaited; a
            # process that starts engines again and again (the bench's
            # starts) would pile up zombies. This polls, it never blocks.
            multiprocessing.active_children()

    def _forget(self) -> None:
        self.engine = None
        gc.collect()  # AsyncLLM sits in reference cycles; collect it now, not at exit

    def next_id(self, session: str | None) -> str:
        # vLLM needs ids unique among requests in flight; a session id repeats.
        return f"{session or 'req'}-{next(self._ids)}"

    def _on_own_loop(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.AbstractEventLoop:
        """The engine's loop, if the caller runs on it; else ``coroutine``
        is closed (no "never awaited" warning) and a PermanentError raised."""
        assert self._loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            coroutine.close()
            raise PermanentError(
                "this vLLM engine runs on the asyncio loop that opened it; to call it from another loop "
                "(trio, another thread) open it with own_thread=True"
            )
        return self._loop

    async def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the engine's loop and await it (from any loop
        when the engine has its own thread)."""
        if self._thread is None:
            self._on_own_loop(coroutine)
            return await coroutine
        return await self._thread.run(coroutine)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the engine's loop; cancel the future to cancel it."""
        if self._thread is None:
            return asyncio.run_coroutine_threadsafe(coroutine, self._on_own_loop(coroutine))
        return self._thread.submit(coroutine)

    def run_blocking(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop from synchronous code and wait
        (e.g. a loop that uses ``engine`` directly, with no bridge between).
        Only for an engine with its own thread: the other kind's loop is the
        caller's, which this would block."""
        if self._thread is None:
            coroutine.close()
            raise RuntimeError("run_blocking needs an engine with its own thread (own_thread=True)")
        return self._thread.run_blocking(coroutine)

    async def unfinished_requests(self) -> int:
        """Requests the engine is still working on (0 once all are done or aborted)."""

        async def count() -> int:
            return int(self.engine.output_processor.get_num_unfinished_requests())

        result: int = await self.run(count())
        return result


def _import_vllm() -> None:
    # vLLM's first import pins the importing frame, and through it every
    # caller's frame and locals (an engine among them, once assigned), for the
    # life of the process: the engine then outlives its shutdown and fails in
    # __del__ at exit. So the first import runs on a thread of its own.
    if "vllm.v1.engine.async_llm" not in sys.modules:
        thread = threading.Thread(
            target=importlib.import_module, args=("vllm.v1.engine.async_llm",), name="agentfly-vllm-import"
        )
        thread.start()
        thread.join()


def _build(config: AsyncVLLMConfig, model: str | os.PathLike[str]) -> Any:
    _import_vllm()  # an import error surfaces from the import below
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(engine_args(config, model))


def _facts(config: AsyncVLLMConfig, engine: Any) -> tuple[Any, int]:
    # With skip_tokenizer_init (a model whose tokenizer vLLM cannot load,
    # e.g. one only a template's library encodes), requests bring prompt_ids.
    tokenizer = None if config.engine_args.get("skip_tokenizer_init") else engine.get_tokenizer()
    return tokenizer, int(engine.model_config.max_model_len)


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
async def open_vllm_engine(
    config: AsyncVLLMConfig, model: str | os.PathLike[str], *, own_thread: bool | None = None
) -> AsyncIterator[VLLMEngine]:
    """Start an engine without blocking the event loop; shut it down on exit,
    cancellation included.

    ``own_thread``: by default (``None``) an engine opened from asyncio runs
    on the caller's loop, with no thread and no hop per call, and one opened
    from trio on an asyncio thread of its own. ``True`` gives it its own
    thread on asyncio too, so that other loops (other threads, trio) may
    share it."""
    if own_thread is None:
        own_thread = not on_asyncio()
    with anyio.CancelScope(shield=True):  # a half-started engine must still be shut down
        if own_thread:
            engine = await anyio.to_thread.run_sync(VLLMEngine.start, config, model)
        else:
            if not on_asyncio():
                raise ConfigError("own_thread", "an engine on the caller's loop needs an asyncio caller; trio needs own_thread")
            engine = await anyio.to_thread.run_sync(VLLMEngine.start_for_loop, config, model, asyncio.get_running_loop())
    try:
        yield engine
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(engine.close)


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
